//! Embeds `EZSTREAM_NATIVE_SOURCE_HASH`, the SHA-256 of the files the extension is built from.
//!
//! connectors/kafka/native.py hashes the same files the same way and refuses an extension whose
//! hash differs: a stale build fails at start, naming the command that rebuilds it.

use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Hashed besides every file under src/; keep in step with `SOURCE_FILES` in native.py.
const FILES: [&str; 4] = ["Cargo.lock", "Cargo.toml", "build.rs", "pyproject.toml"];

fn collect(dir: &Path, root: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("src/ is readable").path();
        if path.is_dir() {
            collect(&path, root, out);
        } else {
            let relative = path.strip_prefix(root).expect("under the crate");
            out.push(relative.to_str().expect("UTF-8 file names").replace('\\', "/"));
        }
    }
}

fn main() {
    // Read when the script runs, not baked in when it is compiled: cargo reuses a compiled build
    // script for a checkout at another path (the target dir may be shared).
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&root);
    let mut files: Vec<String> = FILES.iter().map(|f| f.to_string()).collect();
    collect(&root.join("src"), root, &mut files);
    files.sort();
    let mut hasher = Sha256::new();
    for file in &files {
        hasher.update(file.as_bytes());
        hasher.update([0]);
        hasher.update(fs::read(root.join(file)).expect("a source file is readable"));
        hasher.update([0]);
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-changed=src");
    let hash: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=EZSTREAM_NATIVE_SOURCE_HASH={hash}");
}
