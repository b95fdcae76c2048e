"""Do the scheduler's part for asset-scheduled DAGs, once, in a test's Airflow home.

``airflow dags test`` runs a DAG without a scheduler, so a DAG scheduled on assets never gets the
run its upstream's events would start, nor the events (``triggering_asset_events``). This script
asks Airflow's own scheduler code for that run:

    python -m tests.integration.asset_trigger unpause DAG_ID   # before the upstream runs
    python -m tests.integration.asset_trigger trigger DAG_ID   # after: prints {"run_id", "events"}

``unpause`` matters because Airflow queues an asset-triggered run (AssetDagRunQueue) only for a
DAG that is not paused when the event is recorded. ``trigger`` calls
``DagModel.dags_needing_dagruns`` (is the DAG due: its asset condition met by queued events) and
``SchedulerJobRunner._create_dag_runs_asset_triggered`` (the run, with the events it consumes), as
the scheduler loop does, after ending the runs whose tasks all finished; ``run_id`` is ``null``
when the DAG is not due. Run the run's tasks with
``airflow tasks test DAG_ID TASK_ID RUN_ID``.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

from sqlalchemy import select, update


def unpause(dag_id: str) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        known = session.scalar(select(DagModel.dag_id).where(DagModel.dag_id == dag_id))
    if known is None:  # not parsed into this Airflow home yet
        subprocess.run(
            [sys.executable, "-m", "airflow", "dags", "reserialize"], check=True, capture_output=True
        )
    with create_session() as session:
        done = session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))
        if done.rowcount != 1:
            raise SystemExit(f"DAG {dag_id} is not in the DAGs folder")


def close_finished_runs(dag_id: str, session) -> None:
    """End the DAG's runs whose tasks all finished, as the scheduler would (``tasks test`` runs a
    task but leaves its run open, and an open run counts against ``max_active_runs``)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.state import DagRunState, State, TaskInstanceState

    runs = session.scalars(
        select(DagRun).where(
            DagRun.dag_id == dag_id, DagRun.state.in_((DagRunState.QUEUED, DagRunState.RUNNING))
        )
    ).all()
    for run in runs:
        states = [ti.state for ti in run.get_task_instances(session=session)]
        if states and all(state in State.finished for state in states):
            ok = all(state == TaskInstanceState.SUCCESS for state in states)
            run.set_state(DagRunState.SUCCESS if ok else DagRunState.FAILED)


def trigger(dag_id: str) -> dict:
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunType

    with create_session() as session:
        close_finished_runs(dag_id, session)
    with create_session() as session:
        query, triggered_date_by_dag = DagModel.dags_needing_dagruns(session)
        due = [dm for dm in query.all() if dm.dag_id == dag_id and dm.dag_id in triggered_date_by_dag]
        if not due:
            return {"run_id": None, "events": 0}
        # 3.3 takes the executors (none are needed to create runs); 3.1 has no such argument.
        takes_executors = "executors" in inspect.signature(SchedulerJobRunner.__init__).parameters
        runner = SchedulerJobRunner(job=Job(), **({"executors": []} if takes_executors else {}))
        create = runner._create_dag_runs_asset_triggered
        if "triggered_date_by_dag" in inspect.signature(create).parameters:  # Airflow 3.1
            create(dag_models=due, triggered_date_by_dag=triggered_date_by_dag, session=session)
        else:
            create(dag_models=due, session=session)
        session.flush()
        run = session.scalars(
            select(DagRun)
            .where(DagRun.dag_id == dag_id, DagRun.run_type == DagRunType.ASSET_TRIGGERED)
            .order_by(DagRun.id.desc())
        ).first()
        assert run is not None
        if run.start_date is None:
            # The scheduler stamps a run's start when it starts it; Airflow 3.1's execution API
            # refuses to run a task of a run without one (TIRunContext.dag_run.start_date).
            from airflow.utils import timezone

            run.start_date = timezone.utcnow()
        return {"run_id": run.run_id, "events": len(run.consumed_asset_events)}


if __name__ == "__main__":
    command, dag = sys.argv[1:3]
    if command == "unpause":
        unpause(dag)
    else:
        print(json.dumps(trigger(dag)))
