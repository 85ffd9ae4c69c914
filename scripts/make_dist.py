"""Package the code for spark-submit: dist/lakehouse_dl-<version>.zip (the `pipelines` package, for
--py-files) with conf/ beside it, and print the spark-submit command line that uses them."""
from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import zipfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from pipelines import __version__  # noqa: E402  (the project root must be importable first)

DELTA_PACKAGE = "io.delta:delta-spark_2.12:3.3.2"
# A fixed time for every entry, so the same code gives the same zip byte for byte.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def build(out: Path) -> Path:
    """Write `out/lakehouse_dl-<version>.zip` and `out/conf/`; return the zip's path."""
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"lakehouse_dl-{__version__}.zip"
    package = PROJECT_ROOT / "pipelines"
    files = sorted(p for p in package.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))
    tmp = archive.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            info = zipfile.ZipInfo(str(path.relative_to(PROJECT_ROOT)), ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    tmp.replace(archive)  # a half-written zip never sits under the final name
    conf = out / "conf"
    shutil.rmtree(conf, ignore_errors=True)
    shutil.copytree(PROJECT_ROOT / "conf", conf)
    return archive


def submit_command(archive: Path, job: str = "jobs/nightly.py", env: str = "cluster-cpu") -> str:
    """The spark-submit command line for a job on a cluster, with this build's code. The job finds
    the conf/ beside the zip by itself (LAKEHOUSE_DL_CONF points elsewhere when set)."""
    lines = [
        '  spark-submit --master "$SPARK_MASTER" \\',
        f"  --py-files {shlex.quote(str(archive.resolve()))} \\",
        f"  {job} --env {env}",
        f"# with the JVM Delta engine and GPUs: --env cluster and --packages {DELTA_PACKAGE} (docs/cluster.md)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--job", default="jobs/nightly.py", help="the job the printed command runs")
    args = parser.parse_args(argv)
    archive = build(args.out)
    with zipfile.ZipFile(archive) as zf:
        count = len(zf.namelist())
    print(f"built {archive} ({count} files, {archive.stat().st_size:,} bytes) and {archive.parent / 'conf'}")
    print("submit with:")
    print(submit_command(archive, args.job))
    return 0


if __name__ == "__main__":
    sys.exit(main())
