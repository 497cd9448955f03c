"""Call our hub's Open Inference Protocol routes with KServe's own REST client.

Usage (in the virtualenv that has kserve): python kserve_client_check.py HUB_URL MODEL
Prints one JSON line: what was checked and the probabilities returned.
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str, model: str) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=1, timeout=30))
    out = {"server_live": await client.is_server_live(url),
           "server_ready": await client.is_server_ready(url),
           "model_ready": await client.is_model_ready(url, model)}
    x = np.random.default_rng(0).normal(10, 3, size=(3, 30)).astype(np.float32)
    for binary in (False, True):
        inp = InferInput(name="X", shape=list(x.shape), datatype="FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        res = await client.infer(url, InferRequest(model_name=model, infer_inputs=[inp], request_id="kserve-1"),
                                 model_name=model)
        outs = {o.name: o for o in res.outputs}
        out[f"infer_binary={binary}"] = {"model_version": res.model_version,
                                         "probability": outs["probability"].as_numpy().round(6).tolist()}
    await client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
