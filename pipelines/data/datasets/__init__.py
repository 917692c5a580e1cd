"""Dataset registry, release readers and embedded demo sets for `cnf fetch`."""
from pipelines.data.datasets.registry import DATASETS, DatasetSpec, get_dataset

__all__ = ["DATASETS", "DatasetSpec", "get_dataset"]
