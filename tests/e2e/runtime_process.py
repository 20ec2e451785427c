"""A driver process for the restart test: starts its own Ray and runtime on a given SQLite directory.

  submit DATA SIDE N   submit N five-step tasks, write their ids to SIDE/ids, then run until killed
  resume DATA SIDE     start again on the same Store; once every task in SIDE/ids has ended, write
                       their statuses to SIDE/final.json and exit 0
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from runtime import Runtime, Settings


def main() -> None:
    mode, data, side = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    settings = Settings(data_dir=data, ray_num_cpus=2, ray_object_store_memory=150 * 1024**2,
                        workers=2, tasks_per_worker=4)
    rt = Runtime.start(settings, apps=["tests.apps.basic"])
    client = rt.client()
    if mode == "submit":
        ids = [client.submit("five_steps", {"dir": str(side), "sleep_s": 0.3}).id
               for _ in range(int(sys.argv[4]))]
        (side / "ids.tmp").write_text(json.dumps(ids))
        (side / "ids.tmp").rename(side / "ids")
        while True:  # run until the test kills the whole process tree
            time.sleep(3600)
    ids = json.loads((side / "ids").read_text())
    records = [client.wait(task_id, timeout_s=240) for task_id in ids]
    # A file, not stdout: Ray's own warnings may land on stdout at any moment.
    (side / "final.json").write_text(json.dumps({r.id: r.status.value for r in records}))
    rt.stop()


if __name__ == "__main__":
    main()
