"""The parts of :mod:`workspace_lifecycle.testing`'s random histories, one concern a module.

* ``histories``: the strategies (store operations, perturbed deliveries) and their players;
* ``base``: :class:`~.base.MachineBase`, the state machine's configuration, event loop and
  plumbing, under every mixin below;
* ``requests``: create, start, stop, delete and the owner's limits, as a chat asks them;
* ``provisioning``: the provisioner's and the agents' side (claims, finishes, reports, a deaf
  agent) and a replica restarting;
* ``warm_pools``: filling a pool, building its members, creates that claim one;
* ``holds``: turn holds and time passing on a virtual clock, with their invariant;
* ``invariants``: what every step keeps (rows and events agree, limits, pools).

:class:`~workspace_lifecycle.testing.LifecycleMachine` is assembled from the mixins in
:mod:`workspace_lifecycle.testing`, which exports every public name.
"""
