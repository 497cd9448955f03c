"""gzip-compressed OIP requests from the real tritonclient (issue 13: they were 400)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.model import Model

tritonhttp = pytest.importorskip("tritonclient.http")


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_requests(server, cancer_bundle, cancer_data, algorithm):
    url, hub = server
    hub.registry.push(cancer_bundle, aliases=["champion"])
    x, _, _ = cancer_data
    client = tritonhttp.InferenceServerClient(url.removeprefix("http://"), connection_timeout=10, network_timeout=30)
    try:
        want = Model.load(cancer_bundle).score_array(x[:8])
        for binary in (True, False):
            inp = tritonhttp.InferInput("X", list(x[:8].shape), "FP32")
            inp.set_data_from_numpy(x[:8].astype(np.float32), binary_data=binary)
            res = client.infer("cancer", [inp], request_compression_algorithm=algorithm)
            np.testing.assert_allclose(res.as_numpy("probability"), want.probability, atol=1e-6)
    finally:
        client.close()
