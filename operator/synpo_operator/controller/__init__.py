"""The operator process (`synpo operator`): settings, the run and schedule controllers, the concurrent-run
caps that join them, leader election, and the Kopf wiring. The only package that imports kopf, and the top
of the import graph: it imports the pure core (api, plan, reconcile, schedule, capacity) and the executors,
and nothing imports it.

  settings.py    Settings, built once from the command line and passed in
  runs.py        RunController: informers → work queue → reconcile → status, Events, metrics
  schedules.py   ScheduleController: one pure schedule step per trigger, runs read from the runs informer
  app.py         Operator: builds both, and the capacity glue between them (injected callbacks)
  leader.py      leader election on a coordination.k8s.io Lease
  kopf_app.py    the Kopf registry (startup, probes, SynPOSchedule handlers) and `run(settings)`
  cli.py         `synpo operator` flags → Settings
"""
