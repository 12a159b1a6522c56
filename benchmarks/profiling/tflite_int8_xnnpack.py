import os
import sys
import time

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
sys.path.insert(0, "benchmarks")
sys.path.insert(0, ".")
import inference
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from hmsa_keras.export import tflite
from hmsa_keras.export.saved_model import HMSAExportModule

size = (256, 512)
model, _ = inference.build_model(False)
module = HMSAExportModule(model, (1.0,), False)
x = np.random.default_rng(1).integers(0, 256, (1, *size, 3), dtype=np.uint8)
for variant in ("float32", "full_int8"):
    flat = tflite.convert(
        module,
        variant,
        fixed_size=size,
        representative_images=inference.calibration_images(size)
        if variant == "full_int8"
        else None,
    )
    codes = tflite.operator_codes(flat)
    for resolver in (OpResolverType.AUTO, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES):
        it = Interpreter(model_content=flat, num_threads=2, experimental_op_resolver_type=resolver)
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        it.set_tensor(inp["index"], x)
        it.invoke()
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            it.set_tensor(inp["index"], x)
            it.invoke()
            ts.append(time.perf_counter() - t)
        print(variant, resolver.name, "median %.3f s" % np.median(ts), flush=True)
    print(variant, "ops:", sorted(set(codes)) if not isinstance(codes, dict) else codes, flush=True)
