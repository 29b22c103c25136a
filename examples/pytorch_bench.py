"""The official implementation on the benchmark's model, for comparison with `bench`.

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch rwkv safetensors numpy
    /tmp/tv/bin/python examples/pytorch_bench.py bench-models/rwkv6-L24-D2048-bf16.st "cpu bf16"
    /tmp/tv/bin/python examples/pytorch_bench.py bench-models/rwkv7-L24-D2048-bf16.st "cpu bf16"
    /tmp/tv/bin/python examples/pytorch_bench.py bench-models/rwkv5-L24-D2048-bf16.st "cpu bf16"

Converts the safetensors file to a .pth in /tmp once (the `rwkv` package reads .pth), turns
on the package's RWKV-7 class for an x070 file (`blocks.0.att.k_k`, and DeepEmbed for
`ffn.s_emb`), then prints load time,
512-token prompt tokens/s and generation tokens/s on 2 threads, with the same prompt ids as
`bench`.
"""
import os
import sys
import time

os.environ["RWKV_JIT_ON"] = "1"
os.environ["RWKV_CUDA_ON"] = "0"

import torch  # noqa: E402

torch.set_num_threads(2)
src = sys.argv[1]
strategy = sys.argv[2] if len(sys.argv) > 2 else "cpu bf16"
pth = "/tmp/rwkv-pytorch-bench-" + os.path.basename(src) + ".pth"
if not os.path.exists(pth):
    from safetensors.torch import load_file

    torch.save(load_file(src), pth)
from safetensors import safe_open  # noqa: E402

with safe_open(src, "pt") as f:
    if "blocks.0.att.k_k" in f.keys():
        os.environ["RWKV_V7_ON"] = "1"
    if "blocks.0.ffn.s_emb.weight" in f.keys():
        os.environ["RWKV_DE_VERSION"] = "1"

from rwkv.model import RWKV  # noqa: E402

t0 = time.time()
m = RWKV(model=pth[:-4], strategy=strategy)
print(f"load {time.time() - t0:.1f} s", flush=True)
V = 65536
prompt = [((i * 2654435761) % (1 << 32) >> 7) % V + 1 for i in range(512)]
out, st = m.forward(prompt[:1], None)  # warm-up
t1 = time.time()
out, st = m.forward(prompt, None)
print(f"prompt {512 / (time.time() - t1):.1f} tok/s", flush=True)
n = 16
t2 = time.time()
for _ in range(n):
    out, st = m.forward([int(torch.argmax(out))], st)
print(f"gen {n / (time.time() - t2):.2f} tok/s", flush=True)
