"""Sparse tensors in a .pt data file (issue 17): read as dense, or refused by name when too big."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantstudio.core.data import open_data
from quantstudio.core.errors import InputError


def _images() -> torch.Tensor:
    x = torch.zeros(4, 3, 8, 8)
    x[0, 0, 0, 0] = 1.0
    x[3, 2, 7, 7] = 0.5
    return x


@pytest.mark.parametrize("form", ["tensor", "dict_with_labels"])
def test_sparse_tensor_file_reads_like_the_dense_one(tmp_path, form):
    x = _images()
    obj = x.to_sparse() if form == "tensor" else {"images": x.to_sparse(), "labels": torch.tensor([0, 1, 0, 1]).to_sparse()}
    path = tmp_path / "sparse.pt"
    torch.save(obj, path)
    dense_path = tmp_path / "dense.pt"
    torch.save(x if form == "tensor" else {"images": x, "labels": torch.tensor([0, 1, 0, 1])}, dense_path)
    sparse, dense = (open_data(p, input_shape=(1, 3, 8, 8)) for p in (path, dense_path))
    assert len(sparse) == len(dense) == 4
    a, _, _ = sparse.read(np.arange(4))
    b, _, _ = dense.read(np.arange(4))
    np.testing.assert_array_equal(a, b)


def test_sparse_tensor_too_big_to_make_dense_is_refused_by_name(tmp_path):
    huge = torch.sparse_coo_tensor(torch.zeros(4, 1, dtype=torch.long), torch.ones(1), (100_000, 3, 1000, 1000))
    path = tmp_path / "huge.pt"
    torch.save(huge, path)
    with pytest.raises(InputError) as exc:
        open_data(path, input_shape=(1, 3, 1000, 1000))
    assert str(path) in str(exc.value)
    assert "sparse" in exc.value.message
