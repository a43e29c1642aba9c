"""The provisioner conformance kit: our two provisioners pass it, and it catches the faults it
names (a provisioner that never renews, one that passes no lease token, one that keeps working
on a build whose lease it lost)."""

from __future__ import annotations

import contextlib

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.testing import ProvisionerCheckError, check_provisioner

pytestmark = pytest.mark.anyio

LEASE = 0.6


def simulated(store: wl.Store, *, worker: str, lease_seconds: float) -> wl.SimulatedProvisioner:
    return wl.SimulatedProvisioner(store, worker=worker, lease_seconds=lease_seconds, build_seconds=0.05)


async def test_the_simulated_provisioner_passes(store: wl.Store) -> None:
    report = await check_provisioner(simulated, store, lease_seconds=LEASE)
    assert len(report.builds) == 8 and all(n >= 2 for n in report.renewals.values()), report


class Careless(wl.SimulatedProvisioner):
    """A provisioner that breaks one rule, by name: ``no_renewal`` (claims and finishes but
    never renews), ``no_token`` (finishes without its lease token), ``stubborn`` (refused
    for a lost lease, it finishes the build again without the token), ``unfenced_report``
    (refused for a lost lease, it reports the agent anyway, without the token)."""

    def __init__(self, store: wl.Store, *, fault: str, worker: str, lease_seconds: float) -> None:
        super().__init__(store, worker=worker, lease_seconds=lease_seconds, reap_leases=False)
        self.fault = fault

    async def _complete(self, build: wl.Build) -> None:
        with contextlib.suppress(wl.CallerError, wl.StoreError):  # its writes may be refused
            await self._work(build)

    async def _work(self, build: wl.Build) -> None:
        token = build.lease_token
        if self.fault == "no_renewal":
            await self.store.finish_build(build.build_id, wl.JobStatus.SUCCEEDED, lease=token)
        elif self.fault == "no_token":
            async with wl.holding(self.store, build, lease_seconds=self.lease_seconds):
                await self.store.finish_build(build.build_id, wl.JobStatus.SUCCEEDED)
        else:  # renews by hand, deaf to refusals, and insists on finishing
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._renew_forever, build)
                try:
                    await self.store.finish_build(build.build_id, wl.JobStatus.SUCCEEDED, lease=token)
                except wl.LeaseLostError:
                    if self.fault == "unfenced_report":
                        await self.store.report_agent(build.workspace_id, wl.AgentLifecycle.READY)
                        return
                    with contextlib.suppress(wl.BuildConflictError):
                        await self.store.finish_build(build.build_id, wl.JobStatus.FAILED, "once more")
                    return
                finally:
                    tg.cancel_scope.cancel()
        if build.transition is wl.Transition.START:
            await self.store.report_agent(build.workspace_id, wl.AgentLifecycle.READY, lease=token)

    async def _renew_forever(self, build: wl.Build) -> None:
        while True:
            await anyio.sleep(self.lease_seconds / 3)
            with contextlib.suppress(wl.CallerError, wl.StoreError):
                await self.store.renew_lease(
                    build.build_id, build.lease_token or "", lease_seconds=self.lease_seconds
                )


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("no_renewal", "renewal: the start build finished failed"),
        ("no_token", "create: build .* was not finished with its lease token"),
        ("stubborn", "lost lease: finish_build for the lost build carried no lease token"),
        ("unfenced_report", "lost lease: after its lease was lost, report_agent landed"),
    ],
)
async def test_it_names_the_rule_a_provisioner_breaks(fault: str, message: str) -> None:
    async with wl.open_store("memory://") as store:
        with pytest.raises(ProvisionerCheckError, match=message):
            await check_provisioner(
                lambda store, *, worker, lease_seconds: Careless(
                    store, fault=fault, worker=worker, lease_seconds=lease_seconds
                ),
                store,
                lease_seconds=LEASE,
                step_timeout=10,
            )
