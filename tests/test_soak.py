"""The soak's CI variant (bench/soak.py, issue 18 item 5): about forty seconds of load through a
real `mark serve` on the local cloud with its control loop active, shaped to scale the fleet out
and back in. Every request is answered exactly once (a 200 carrying its own id), none is lost or
refused while the fleet and the serverless pool have capacity, the front end's open descriptors
end within a small bound of where they started (plus those of the serverless sandboxes still
warm), and no instance process outlives `mark serve`.
No timing is asserted: the figures go to the README from `python bench/soak.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.soak import CONFIG, cycles, instance_pids, soak, stop_and_count_leaks
from tests.conftest import Served

FD_BOUND = 16  # descriptors the front end may end with beyond its start (pooled connections)
PER_SANDBOX_FDS = 4  # the control plane's pipe pair and the sockets to each warm sandbox


async def test_soak_answers_every_request_once_and_leaks_nothing(
    serve_factory: Any, tmp_path: Path
) -> None:
    served: Served = serve_factory(
        f"sqlite+aiosqlite:///{tmp_path / 'soak.db'}", config_text=CONFIG
    )
    report = await soak(
        served.base_url, served.token, served.process.pid, cycles(40.0), settle_s=20.0
    )
    instances = instance_pids(served.process.pid)
    assert report.statuses == {"200": report.requests}, (report, served.log()[-3000:])
    assert report.answered_once and report.lost == 0 and report.error_rate == 0.0
    assert report.peak_instances >= 2 and report.launches >= 2, report  # scaled out
    assert report.final_instances < report.peak_instances and report.drains >= 1, report  # in
    warmed = max(report.end.sandboxes - report.start.sandboxes, 0)  # they idle out in 10 min
    assert report.end.fds <= report.start.fds + FD_BOUND + PER_SANDBOX_FDS * warmed, report
    assert stop_and_count_leaks(served.process, instances) == 0
