"""MinIO on a loopback address, built once with ``go install`` into the download cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from connectors.errors import ServiceError
from connectors.settings import Settings
from infra.local.net import is_loopback, port_in_use
from infra.local.process import ManagedProcess

MODULE = "github.com/minio/minio"


class MinioServer:
    """Single-drive MinIO serving ``$EZ_HOME/minio/data`` at ``EZ_MINIO_ADDRESS``."""

    name = "minio"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        host, _, port = settings.minio_address.rpartition(":")
        self.host, self.port = host, int(port)
        self.proc = ManagedProcess(self.name, settings.run_dir, settings.logs_dir)
        self.dir = settings.home / "minio"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}"

    def binary(self) -> Path:
        """The MinIO binary in the cache, built with ``go install`` on first use."""
        version = self.settings.minio_version
        gobin = self.settings.cache_dir / "minio" / version
        binary = gobin / "minio"
        if binary.exists():
            return binary
        go = shutil.which("go")
        if go is None:
            raise ServiceError("MinIO: `go` is not on PATH; infra/local builds MinIO with go install")
        gobin.mkdir(parents=True, exist_ok=True)
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        build_log = self.settings.logs_dir / "minio-build.log"
        print(f"building MinIO {version} with go install (first time only, a few minutes)…", flush=True)
        env = {**os.environ, "GOBIN": str(gobin), "CGO_ENABLED": "0"}
        with open(build_log, "wb") as log:
            result = subprocess.run(
                [go, "install", f"{MODULE}@{version}"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        if result.returncode != 0 or not binary.exists():
            tail = "\n".join(build_log.read_text(errors="replace").splitlines()[-20:])
            raise ServiceError(f"MinIO: go install {MODULE}@{version} failed (log: {build_log}):\n{tail}")
        return binary

    def healthy(self, timeout_s: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/minio/health/live", timeout=timeout_s) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def up(self) -> str:
        """Start MinIO unless ours already runs, wait for it, make sure the lake bucket exists."""
        if self.proc.pid() is not None:
            self.proc.wait_ready(self.healthy, self.settings.start_timeout_s, "MinIO")
            self.ensure_buckets()
            return "already running"
        if not is_loopback(self.host):
            raise ServiceError(f"MinIO: EZ_MINIO_ADDRESS {self.address} is not a loopback address")
        if port_in_use(self.host, self.port):
            raise ServiceError(
                f"MinIO: port {self.port} on {self.host} is taken by another process; "
                "stop it or set EZ_MINIO_ADDRESS to a free port"
            )
        binary = self.binary()
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "MINIO_ROOT_USER": self.settings.minio_root_user,
            "MINIO_ROOT_PASSWORD": self.settings.minio_root_password.get_secret_value(),
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        }
        argv = [str(binary), "server", str(data), "--address", self.address]
        self.proc.start(argv, env=env, marker=str(data), state={"address": self.address})
        self.proc.wait_ready(self.healthy, self.settings.start_timeout_s, "MinIO")
        self.ensure_buckets()
        return "started"

    def down(self) -> bool:
        return self.proc.stop(timeout_s=30)

    def client(self):
        """A boto3 S3 client for this MinIO with its root credentials."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.settings.minio_root_user,
            aws_secret_access_key=self.settings.minio_root_password.get_secret_value(),
            region_name=self.settings.s3_region,
            config=Config(retries={"max_attempts": 3}, s3={"addressing_style": "path"}),
        )

    def buckets(self) -> list[str]:
        """The bucket of EZ_MINIO_BUCKET, and that of EZ_LAKE_URI when the lake is on this MinIO."""
        names = [self.settings.minio_bucket]
        lake = self.settings.lake_uri
        if lake.startswith(("s3://", "s3a://")) and self.settings.s3_endpoint == self.endpoint:
            names.append(lake.split("://", 1)[1].split("/", 1)[0])
        return list(dict.fromkeys(names))

    def ensure_buckets(self) -> None:
        s3 = self.client()
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for name in self.buckets():
            if name not in existing:
                s3.create_bucket(Bucket=name)
