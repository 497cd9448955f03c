"""Shadow deployments: mirror live requests to candidate versions off the critical path.

* :mod:`.service` — :class:`ShadowService` (``hub.shadow``): attached shadows per model
  name, the bounded mirror queue + worker thread(s), batched comparison records;
* :mod:`.report` — identical-bucket rate, decision-change rate, KS test, most divergent
  segments, latency vs SLA and a PASS / FAIL verdict;
* :mod:`.segments` — segment fields chosen from the request (row field, numeric bins, tags).
"""
