"""KServe's Python model server with a minimal ONNX Runtime model.

Usage: python kserve_server.py MODEL.onnx PORT GRPC_PORT [MODEL_NAME]  (name default: cancer)
"""

import sys

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(self.path, sess_options=so, providers=["CPUExecutionProvider"])
        self.input_name = self.sess.get_inputs()[0].name
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self.ready = True
        return True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        outs = self.sess.run(None, {self.input_name: x})
        outputs = []
        for name, arr in zip(self.output_names, outs):
            dt = "INT64" if arr.dtype == np.int64 else "FP32"
            o = InferOutput(name=name, shape=list(arr.shape), datatype=dt)
            o.set_data_from_numpy(arr, binary_data=False)
            outputs.append(o)
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id or "")


if __name__ == "__main__":
    model = OnnxModel(sys.argv[4] if len(sys.argv) > 4 else "cancer", sys.argv[1])
    ModelServer(http_port=int(sys.argv[2]), grpc_port=int(sys.argv[3]), workers=1, enable_grpc=False,
                enable_latency_logging=False).start([model])
