"""The executor engine that compute, network and storage share: each of them is this engine plus a cloud
adapter of its own (its ``cloud.py``).

- ``accept``: the command handler, recording each step command as an operation (idempotent by dispatch id,
  and answering a command asked again with the operation's latest progress);
- ``workers``: leased operation workers that run the adapter and report every transition;
- ``repository``: every query of the ``operations`` table;
- ``credentials``: whose credentials act (a run's Keystone trust), one connection cache per trust;
- ``models``: the adapter Protocol, and the frozen models adapters' reads return (the read APIs'
  response models);
- ``wait``: ``wait_for_status``, the one poll-until-deadline loop;
- ``marks``: how what DCOSTACK creates is marked and found again;
- ``errors``: CloudError and the one translator of openstacksdk errors, with per-service hint tables;
- ``reads``: the read-API router over an adapter's read methods;
- ``cinder``: Cinder volumes, which compute and storage both touch.

Nothing is imported here, so that ``shared.executor.marks`` stays cheap for the planner.
"""
