"""The Attentive Reader on cnn_qa: masks everywhere (padded positions change no output, statistic
or attention weight), the document encoder against torch.nn.LSTM(bidirectional=True), the
BN-everywhere / BN-e* / BN-e** options, and a few training steps of every variant via fit."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from suite.core import variants
from suite.core.cells.norms import StepBatchNorm, batch_norms
from tasks.resolve import resolve
from suite.core.train import fit
from tasks.base import create
from tasks.cnn_qa import QABatch
from tasks.cnn_qa_data import write_questions


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cnn-model")
    write_questions(root, {"train": 24, "valid": 6, "test": 6}, seed=11, sentences=5)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cnn-data")


def make(source: Path, data_dir: Path, variant: str, bidirectional: bool = False, **options):
    config = resolve({"task": {"name": "cnn_qa", "embed_size": 6, **options},
                      "model": {"variant": variant, "hidden_size": 5, "bidirectional": bidirectional},
                      "train": {"steps": 2, "batch_size": 6, "eval_every": 2, "reestimate_batches": 1,
                                "device": "cpu", "seed": 2},
                      "optim": {"lr": 1e-2},
                      "data": {"dir": str(data_dir), "path": str(source)}}, "test")
    task = create("cnn_qa", config.task.options, config.data.dir, config.data.path)
    torch.manual_seed(0)
    return task, config, task.build_model(config.model)


def garbled(batch: QABatch, extra: int, vocab: int) -> QABatch:
    """The same batch with random tokens in every padded position and `extra` more padded steps."""
    gen = torch.Generator().manual_seed(5)

    def fill(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = torch.randint(3, vocab, (tokens.shape[0] + extra, tokens.shape[1]), generator=gen)
        keep = torch.arange(out.shape[0]).unsqueeze(1) < lengths.unsqueeze(0)
        out[:tokens.shape[0]] = torch.where(keep[:tokens.shape[0]], tokens, out[:tokens.shape[0]])
        return out

    return QABatch(fill(batch.inputs, batch.lengths), batch.targets, batch.lengths,
                   fill(batch.query, batch.query_lengths), batch.query_lengths, batch.candidates)


@pytest.mark.parametrize("sequence_statistics", [False, True])
@pytest.mark.parametrize("variant", ["bn_lstm", "cudnn_lstm"])
def test_padding_changes_no_output_statistic_or_attention(source, data_dir, variant, sequence_statistics):
    task, _, model = make(source, data_dir, variant, bidirectional=True, attention_bn=True,
                          sequence_statistics=sequence_statistics)
    # The six shortest documents, so that the extra padding stays within T_max (training batches
    # never exceed it: T_max is the longest training document).
    batch = task.batch("train", np.argsort(task.split("train").doc_lengths, kind="stable")[:6])
    assert int(batch.lengths.min()) < int(batch.lengths.max())  # the batch really has padding
    extra = min(4, task.seq_len - batch.inputs.shape[0])
    assert extra >= 2
    noisy = garbled(batch, extra=extra, vocab=task.vocab_size)
    first, second = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    logits, attention = first.read(batch)
    logits2, attention2 = second.read(noisy)
    torch.testing.assert_close(logits2, logits)
    steps = batch.inputs.shape[0]
    torch.testing.assert_close(attention2[:steps], attention)
    assert (attention2[steps:] == 0).all()
    pad = torch.arange(steps).unsqueeze(1) >= batch.lengths.unsqueeze(0)
    assert (attention[pad] == 0).all()
    torch.testing.assert_close(attention.sum(0), torch.ones(6))
    for a, b in zip(batch_norms(first), batch_norms(second), strict=True):  # training updated the statistics
        torch.testing.assert_close(b.running_mean, a.running_mean)
        torch.testing.assert_close(b.running_var, a.running_var)
    if variant == "bn_lstm":
        assert len(batch_norms(first)) == 2 * 2 * 3 + 4  # two encoders x two directions x 3 norms, 4 in the reader
        assert not torch.equal(batch_norms(first)[0].running_mean, batch_norms(model)[0].running_mean)


@pytest.mark.parametrize("variant", ["lstm", "cudnn_lstm", "ln_lstm"])
def test_a_question_reads_the_same_alone_and_in_a_padded_batch(source, data_dir, variant):
    task, _, model = make(source, data_dir, variant, bidirectional=True)
    model.eval()
    index = np.arange(6)
    together = model(task.batch("valid", index))[0]
    for row in range(6):
        alone = model(task.batch("valid", index[row:row + 1]))[0]
        torch.testing.assert_close(alone[0], together[row], atol=1e-5, rtol=1e-5)


def test_document_encoder_matches_torch_bidirectional_lstm(source, data_dir):
    task, _, model = make(source, data_dir, "lstm", bidirectional=True)
    batch = task.batch("train", np.arange(6))
    reference = torch.nn.LSTM(6, 5, bidirectional=True)
    with torch.no_grad():
        for suffix, layer in (("", model.doc_rnn.layers[0]), ("_reverse", model.doc_rnn.layers[1])):
            getattr(reference, f"weight_ih_l0{suffix}").copy_(layer.weight_ih)
            getattr(reference, f"weight_hh_l0{suffix}").copy_(layer.weight_hh)
            getattr(reference, f"bias_ih_l0{suffix}").copy_(layer.bias)
            getattr(reference, f"bias_hh_l0{suffix}").zero_()
            assert not layer.init_state.any()  # the learned initial state starts at zero, as torch's default
    x = model.embed(batch.inputs)
    ours, (h, _) = model.doc_rnn(x, lengths=batch.lengths)
    packed, (h_ref, _) = reference(pack_padded_sequence(x, batch.lengths, enforce_sorted=False))
    theirs, _ = pad_packed_sequence(packed, total_length=x.shape[0])
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h, h_ref, atol=1e-6, rtol=1e-5)


def test_bn_options_reach_the_encoders_and_the_attention(source, data_dir):
    _, _, plain = make(source, data_dir, "bn_lstm")
    assert not [m for m in (plain.n_ym, plain.n_um, plain.n_rg, plain.n_ug) if isinstance(m, StepBatchNorm)]
    assert plain.doc_rnn.layers[0].norm_x.per_step
    task, _, everywhere = make(source, data_dir, "bn_lstm", attention_bn=True)
    assert everywhere.n_ym.per_step and everywhere.n_ym.t_max == task.seq_len
    assert everywhere.doc_rnn.layers[0].norm_x.t_max == task.seq_len
    assert everywhere.query_rnn.layers[0].norm_x.t_max == task.query_len
    assert everywhere.n_um.weight.detach().eq(0.1).all()
    _, _, star = make(source, data_dir, "bn_lstm", attention_bn=True, sequence_statistics=True)
    layer = star.doc_rnn.layers[0]
    assert not layer.norm_x.per_step and layer.norm_h.per_step and layer.norm_c.per_step  # input term only
    assert not star.n_ym.per_step
    _, _, star2 = make(source, data_dir, "bn_lstm", bidirectional=True, attention_bn=True, sequence_statistics=True)
    assert len(star2.doc_rnn.layers) == 2 and star2.out.in_features == 10
    _, _, vertical = make(source, data_dir, "bn_vertical", sequence_statistics=True)
    assert not vertical.doc_rnn.layers[0].norm_x.per_step
    _, _, lstm = make(source, data_dir, "lstm", sequence_statistics=True)  # no BN to share: nothing changes
    assert not batch_norms(lstm)


def test_model_dropout_reaches_the_embeddings(source, data_dir):
    task, config, _ = make(source, data_dir, "lstm")
    config = config.replace(model=type(config.model)(**{**vars(config.model), "dropout": 0.5}))
    model = task.build_model(config.model)
    batch = task.batch("valid", np.arange(4))
    model.train()
    assert not torch.equal(model(batch)[0], model(batch)[0])
    model.eval()
    torch.testing.assert_close(model(batch)[0], model(batch)[0])


@pytest.mark.parametrize("variant", variants.names())
def test_every_variant_trains_as_bn_e_star_star(source, data_dir, variant):
    task, config, _ = make(source, data_dir, variant, bidirectional=True, attention_bn=True,
                           sequence_statistics=True)
    result = fit(task, config)
    summary = result.summary
    assert result.status == "finished" and summary["steps"] == 2 and summary["metric"] == "error"
    for key in ("best_valid", "test_at_best", "test_at_last"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert all(math.isfinite(row["loss"]) for row in result.curve)
    assert {row["split"] for row in result.curve} == {"train", "valid"}


@pytest.mark.slow
def test_the_reader_learns_the_synthetic_task(tmp_path: Path):
    """Synthetic questions restate one context sentence: a trained reader clearly beats guessing
    among the document's entities (it fits the training split almost perfectly; with 2,000
    questions of 60 anonymized entities it generalizes only part of the way)."""
    root = tmp_path / "own"
    write_questions(root, {"train": 2000, "valid": 200, "test": 100}, seed=12, sentences=4)
    config = resolve({"task": {"name": "cnn_qa", "embed_size": 32},
                      "model": {"variant": "lstm", "hidden_size": 32, "bidirectional": True},
                      "train": {"steps": 500, "batch_size": 32, "eval_every": 250, "device": "cpu"},
                      "optim": {"lr": 3e-3}, "data": {"dir": str(tmp_path / "d"), "path": str(root)}}, "test")
    task = create("cnn_qa", config.task.options, config.data.dir, config.data.path)
    guess = 1.0 - float(np.mean([1.0 / float(task.batch("valid", [i]).candidates.sum()) for i in range(200)]))
    result = fit(task, config)
    assert result.curve[-2]["split"] == "train" and result.curve[-2]["value"] < 0.25
    assert result.summary["best_valid"] < guess - 0.08, (result.summary["best_valid"], guess)
