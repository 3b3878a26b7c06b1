import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SHARED_TFDS = ROOT.parent / "shared" / "tensorflow_datasets"
# Offline MNIST: tests never download; they read the prepared copy beside the checkout when no other is set.
if "TFDS_DATA_DIR" not in os.environ and _SHARED_TFDS.is_dir():
    os.environ["TFDS_DATA_DIR"] = str(_SHARED_TFDS)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
