"""Run every benchmark of bench/ in turn (``make bench``); each prints its own figures."""

import subprocess
import sys
from pathlib import Path

for script in ("bench_decode.py", "bench_fit.py", "bench_frame.py", "bench_service.py"):
    print(f"\n=== bench/{script} ===", flush=True)
    subprocess.run([sys.executable, str(Path(__file__).with_name(script))], check=False)
