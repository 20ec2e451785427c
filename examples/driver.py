"""A driver script for a runtime that runs on its own (``raysquad up --detach``): it connects, submits
a batch of tasks, follows their events and prints their results.

On the cluster's head node, from the project's directory::

    ray start --head
    raysquad up --detach --app examples.hello
    ray job submit --working-dir . -- python examples/driver.py Ada Grace Linus

or simply ``python examples/driver.py Ada Grace`` on a machine of the cluster. The script exits
non-zero when a task does not succeed.
"""

from __future__ import annotations

import argparse
import sys
import threading

from runtime import Client, TaskStatus


def follow(client: Client, task_id: str, lines: list[str]) -> None:
    """Collect one task's events until it ends (each follower has its own thread)."""
    for event in client.events(task_id, follow=True):
        lines.append(f"{task_id} {event.seq:>3} {event.kind}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="one task per name")
    parser.add_argument("--workflow", default="hello")
    args = parser.parse_args(argv)

    client = Client.connect()  # the cluster this job runs on, the runtime in RAYSQUAD_NAMESPACE
    tasks = [client.submit(args.workflow, {"name": name})
             for name in args.names]
    print(f"submitted {len(tasks)} task(s): {' '.join(t.id for t in tasks)}", flush=True)

    lines: list[str] = []
    followers = [threading.Thread(target=follow, args=(client, t.id, lines)) for t in tasks]
    for f in followers:
        f.start()
    for f in followers:
        f.join()
    print("\n".join(lines))

    failed = 0
    for task in tasks:
        record = client.wait(task.id)
        if record.status is TaskStatus.SUCCEEDED:
            print(f"{record.id} {record.status.value}: {record.output}")
        else:
            failed += 1
            print(f"{record.id} {record.status.value}: {record.error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
