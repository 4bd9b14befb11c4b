"""``python -m infra.grafana``: write the dashboards' JSON files; ``--check``: exit 1 if a file
differs from what :mod:`infra.grafana.dashboards` generates (a dashboard edited by hand, or a
generator change not written out)."""

from __future__ import annotations

import sys

from infra.grafana import DASHBOARDS_DIR
from infra.grafana.dashboards import render


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print("usage: python -m infra.grafana [--check]", file=sys.stderr)
        return 2
    texts = render()
    stale = sorted({p.name for p in DASHBOARDS_DIR.glob("*.json")} - set(texts))
    changed = [name for name, text in texts.items()
               if not (DASHBOARDS_DIR / name).exists() or (DASHBOARDS_DIR / name).read_text() != text]
    if check:
        for name in changed:
            print(f"{DASHBOARDS_DIR / name} is not what the generator writes: run python -m infra.grafana",
                  file=sys.stderr)
        for name in stale:
            print(f"{DASHBOARDS_DIR / name} is no dashboard of infra/grafana/dashboards.py", file=sys.stderr)
        return 1 if changed or stale else 0
    DASHBOARDS_DIR.mkdir(exist_ok=True)
    for name in changed:
        (DASHBOARDS_DIR / name).write_text(texts[name])
        print(f"wrote {DASHBOARDS_DIR / name}")
    for name in stale:
        (DASHBOARDS_DIR / name).unlink()
        print(f"removed {DASHBOARDS_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
