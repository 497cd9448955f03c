"""Champion/challenger routing: a sticky traffic split per model name, feedback, evaluation.

* :mod:`.split` — which group answers an entity (stable SHA-256 bucket, never ``hash()``);
* :mod:`.stats` — significance tests (two-proportion z-test, DeLong AUC test, Welch t-test);
* :mod:`.evaluation` — joins predictions with feedback and answers PROMOTE / KEEP_CHAMPION /
  NOT_ENOUGH_DATA with the numbers;
* :mod:`.service` — :class:`RoutingService` (``hub.routing``): persisted split config,
  buffered prediction log, feedback, evaluation and atomic promotion via the registry.
"""
