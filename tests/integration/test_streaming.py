"""A split whose decoded images are larger than the object store streams through the Ray Data reader."""

import json
import subprocess
import sys
import textwrap

STORE = 80 * 1024**2

SCRIPT = textwrap.dedent(f"""
    import io, json, sys
    import numpy as np, pyarrow as pa, pyarrow.parquet as pq, ray
    from PIL import Image
    from srel_ray.config import DataConfig
    from srel_ray.data.real import load_dataset
    from srel_ray.distributed.datasets import ray_dataset

    root = sys.argv[1]
    rng = np.random.default_rng(0)
    def png(a):
        buf = io.BytesIO(); Image.fromarray(a).save(buf, format="PNG"); return buf.getvalue()
    tiles = [png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(10)]
    n = 1800  # decoded at 128 px: 1800 * 3 * 128 * 128 bytes = 88 MB, over the 80 MB store
    for split, rows in (("train", n), ("test", 10)):
        pq.write_table(pa.table({{"image": [tiles[i % 10] for i in range(rows)], "label": [i % 10 for i in range(rows)]}}),
                       f"{{root}}/{{split}}.parquet", row_group_size=100)
    ray.init(num_cpus=2, object_store_memory={STORE}, include_dashboard=False, logging_level="ERROR")
    data = load_dataset(DataConfig(name="parquet", path=root, image_size=128, channels=3))
    rows = bytes_seen = label_sum = 0
    for batch in ray_dataset(data, "train").iter_batches(batch_size=64, batch_format="numpy"):
        rows += len(batch["label"]); bytes_seen += batch["image"].nbytes; label_sum += int(batch["label"].sum())
    print(json.dumps({{"rows": rows, "bytes": bytes_seen, "label_sum": label_sum,
                      "store": ray.cluster_resources()["object_store_memory"]}}))
""")


def test_split_larger_than_object_store_streams(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["store"] <= STORE * 1.01
    assert result["rows"] == 1800 and result["label_sum"] == sum(i % 10 for i in range(1800))
    assert result["bytes"] == 1800 * 3 * 128 * 128 > result["store"]
