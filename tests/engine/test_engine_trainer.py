from __future__ import annotations

import pytest
import torch
from engine_toy import ToyMomentumModel, make_loader, parity_batch, toy_step_inputs
from ignite.engine import Events

from nas.config import ConfigError, from_dict
from nas.config.distillation import DistillationConfig
from nas.engine import (
    NonFiniteLossError,
    ScheduleConfig,
    TrainConfig,
    build_optimizer,
    create_trainer,
    fit,
    lr_at,
)

CFG = TrainConfig(epochs=2, schedule=ScheduleConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2), progress_bar=False)


def _trainer(model, cfg=CFG, epoch_length=4, step_inputs=None):
    optimizer = build_optimizer(model, cfg.optim, lr=cfg.schedule.lr)
    return create_trainer(
        model, optimizer, cfg, epoch_length=epoch_length, step_inputs=step_inputs
    ), optimizer


def test_step_outputs_alpha_ramp_lr_schedule_and_counts():
    torch.manual_seed(0)
    trainer, _ = _trainer(ToyMomentumModel(), step_inputs=toy_step_inputs)  # α 0.4, ramped
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run([parity_batch(i) for i in range(4)], max_epochs=2)

    assert [o["alpha"] for o in outputs] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4])
    shape = {"peak": 1e-3, "floor": 1e-4, "warmup_steps": 2, "total_steps": 8}
    assert [o["lr"] for o in outputs] == pytest.approx([lr_at(i, **shape) for i in range(8)])
    for o in outputs:
        caption_counts = {"captions_truncated_words", "captions_truncated_tokens", "captions_unk_only"}
        assert (
            set(o)
            == {"fit", "queue", "distill", "total", "lr", "alpha", "images", "skipped"} | caption_counts
        )
        assert all(o[name] == 0 for name in caption_counts)  # the toy batches carry no caption counts
        assert o["total"] == pytest.approx(o["fit"] + o["queue"] + o["distill"])
        assert (o["images"], o["skipped"]) == (8, 2)
    assert outputs[0]["distill"] == 0.0  # alpha 0 at the very first step


def test_first_step_with_zero_lr_changes_no_trainable_weight():
    torch.manual_seed(0)
    model = ToyMomentumModel(dropout=0.0, noise=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer, _ = _trainer(model)
    trainer.run([parity_batch(0)], max_epochs=1)
    after = model.state_dict()
    assert torch.equal(after["head.weight"], before["head.weight"])  # lr 0 at step 0 (warm-up from 0)
    assert not torch.equal(after["queue"], before["queue"])  # but forward updated the queue
    assert after["queue_ptr"].item() == 8


def test_nan_loss_raises_naming_the_term_before_the_update():
    torch.manual_seed(0)
    model = ToyMomentumModel(nan_at_call=3)
    trainer, _ = _trainer(model)
    snapshot = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(once=2),
        lambda e: snapshot.update({n: p.detach().clone() for n, p in model.named_parameters()}),
    )
    with pytest.raises(NonFiniteLossError, match=r"'queue' is nan at iteration 3 \(epoch 1\)") as info:
        trainer.run([parity_batch(i) for i in range(4)], max_epochs=2)
    assert (info.value.term, info.value.iteration, info.value.epoch) == ("queue", 3, 1)
    for name, p in model.named_parameters():
        if p.requires_grad:  # (the momentum copy moved inside forward, as it would in ALBEF)
            assert torch.equal(p, snapshot[name]), name  # no optimizer step with the NaN loss


def test_fit_does_not_end_silently_on_nan(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(NonFiniteLossError, match="'queue'"):
        fit(ToyMomentumModel(nan_at_call=6), make_loader(), CFG, output_dir=tmp_path)
    assert not (tmp_path / "last.pt").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint_1.pt"]


def test_gradients_are_clipped_to_the_configured_norm():
    torch.manual_seed(0)
    model = ToyMomentumModel()
    trainer, _ = _trainer(model, TrainConfig(grad_clip_norm=1e-3))
    trainer.run([parity_batch(0)], max_epochs=1)
    norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
    )
    assert norm.item() == pytest.approx(1e-3, rel=1e-4)


def test_bf16_autocast_runs_on_cpu_and_unsupported_is_an_error(monkeypatch):
    torch.manual_seed(0)
    trainer, _ = _trainer(ToyMomentumModel(), TrainConfig(precision="bf16"))
    trainer.run([parity_batch(0)], max_epochs=1)
    assert torch.isfinite(torch.tensor(trainer.state.output["total"]))

    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(ValueError, match="train.precision='bf16'"):
        _trainer(ToyMomentumModel(), TrainConfig(precision="bf16"))


@pytest.mark.parametrize(
    ("broken", "error", "match"),
    [
        (lambda b: {k: v for k, v in b.items() if k != "num_skipped"}, KeyError, "num_skipped"),
        (lambda b: {k: v for k, v in b.items() if k != "image"}, KeyError, "'image'"),
        (lambda b: [b["image"]], TypeError, "dict of tensors"),
    ],
)
def test_malformed_batches_are_named(broken, error, match):
    trainer, _ = _trainer(ToyMomentumModel())
    with pytest.raises(error, match=match):
        trainer.run([broken(parity_batch(0))], max_epochs=1)


class _Returns(torch.nn.Module):
    def __init__(self, make):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.make = make

    def forward(self, batch):
        return self.make(self.w)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda w: w * 2, TypeError, "dict of loss terms"),
        (lambda w: {"total": w * 2}, ValueError, "reserved"),
        (lambda w: {"itc": w * torch.ones(3)}, ValueError, "'itc' must be a scalar"),
        (lambda w: {"itc": torch.tensor(1.0)}, ValueError, "no loss term carries a gradient"),
    ],
)
def test_model_output_contract_is_checked(make, error, match):
    trainer, _ = _trainer(_Returns(make))
    with pytest.raises(error, match=match):
        trainer.run([parity_batch(0)], max_epochs=1)


def test_train_config_is_strict_and_names_nested_keys():
    with pytest.raises(ConfigError, match="schedule.warmup"):
        from_dict(TrainConfig, {"schedule": {"warmup": 5}})
    with pytest.raises(ConfigError, match="epochs"):
        from_dict(TrainConfig, {"epochs": 0})
    with pytest.raises(ConfigError, match="precision"):
        from_dict(TrainConfig, {"precision": "fp16"})
    with pytest.raises(ConfigError, match="launch.backend"):
        from_dict(TrainConfig, {"launch": {"backend": "mpi"}})
    cfg = from_dict(
        TrainConfig, {"epochs": 29, "launch": {"nproc_per_node": 8}, "optim": {"weight_decay": 0.02}}
    )
    assert (cfg.epochs, cfg.launch.nproc_per_node, cfg.optim.weight_decay) == (29, 8, 0.02)


def test_caption_counts_of_the_batches_are_summed_into_the_step_and_the_epoch(tmp_path):
    from nas.engine import ScheduleConfig, TrainConfig, fit

    batches = [
        {**parity_batch(i), "num_truncated_words": 1, "num_truncated_tokens": i, "num_unk_only": 2}
        for i in range(3)
    ]
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, schedule=ScheduleConfig(lr=1e-3, warmup_steps=0), progress_bar=False)
    result = fit(ToyMomentumModel(), batches, cfg, output_dir=tmp_path)
    epoch = result["history"][0]
    assert (
        epoch["captions_truncated_words"],
        epoch["captions_truncated_tokens"],
        epoch["captions_unk_only"],
    ) == (3, 3, 6)
    with pytest.raises(KeyError, match="num_unk_only"):
        fit(ToyMomentumModel(), [{**parity_batch(0), "num_unk_only": 1.5}], cfg, output_dir=tmp_path / "bad")


class _Kwargs(torch.nn.Module):
    """Records the keyword arguments of every call; `forward(batch)` alone unless `takes_alpha`."""

    def __init__(self, takes_alpha: bool):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.calls: list[dict] = []
        self.takes_alpha = takes_alpha

    def forward(self, batch, **kwargs):
        if kwargs and not self.takes_alpha:
            raise TypeError(f"forward() got unexpected keyword arguments {sorted(kwargs)}")
        self.calls.append(kwargs)
        return {"fit": self.w * batch["image"].mean()}


def test_without_a_step_input_hook_the_model_is_called_with_the_batch_alone():
    model = _Kwargs(takes_alpha=False)
    trainer, _ = _trainer(model)
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run([parity_batch(i) for i in range(2)], max_epochs=1)
    assert model.calls == [{}, {}]
    assert "alpha" not in outputs[0] and set(outputs[0]) >= {"fit", "total", "lr", "images"}


@pytest.mark.parametrize(
    ("distillation", "expected"),
    [
        # ramp: α * min(1, i / 4) at 0-based global iteration i, epochs of 4 steps
        (DistillationConfig(alpha=0.4, ramp=True), [0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4]),
        (DistillationConfig(alpha=0.3, ramp=False), [0.3] * 8),  # no ramp: α from the first step
        (DistillationConfig(alpha=0.0, ramp=True), [0.0] * 8),
    ],
    ids=["ramp", "constant", "zero"],
)
def test_the_step_input_hook_feeds_the_model_and_is_logged(distillation, expected):
    model = _Kwargs(takes_alpha=True)
    trainer, _ = _trainer(model, step_inputs=distillation.step_inputs)
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run([parity_batch(i) for i in range(4)], max_epochs=2)
    assert [call["alpha"] for call in model.calls] == pytest.approx(expected)
    assert [set(call) for call in model.calls] == [{"alpha"}] * 8
    assert [o["alpha"] for o in outputs] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("hook", "match"),
    [
        (lambda i, n: [0.4], "dict of keyword -> number"),
        (lambda i, n: {"lr": 0.4}, "'lr' is reserved"),
        (lambda i, n: {"seconds": 0.4}, "'seconds' is reserved"),
        (lambda i, n: {"not a name": 0.4}, "not a keyword argument name"),
        (lambda i, n: {"alpha": "0.4"}, "'alpha' must be a finite number"),
        (lambda i, n: {"alpha": float("nan")}, "'alpha' must be a finite number"),
    ],
)
def test_a_bad_step_input_hook_is_refused_before_the_first_step(hook, match):
    with pytest.raises((TypeError, ValueError), match=match):
        _trainer(_Kwargs(takes_alpha=True), step_inputs=hook)


def test_step_inputs_keep_their_names_and_do_not_clash_with_loss_terms():
    trainer, _ = _trainer(
        _Kwargs(takes_alpha=True), step_inputs=lambda i, n: {"alpha": 0.1} if i == 0 else {"beta": 0.1}
    )
    with pytest.raises(ValueError, match=r"\['beta'\] at this step, \['alpha'\] at step 0"):
        trainer.run([parity_batch(i) for i in range(2)], max_epochs=1)
    trainer, _ = _trainer(_Kwargs(takes_alpha=True), step_inputs=lambda i, n: {"fit": 0.1})
    with pytest.raises(ValueError, match="'fit' is also a step input"):
        trainer.run([parity_batch(0)], max_epochs=1)


def test_fit_logs_the_step_inputs_per_step_and_per_epoch(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(
        epochs=2, schedule=ScheduleConfig(lr=1e-3, warmup_steps=0), progress_bar=False, log_every_steps=1
    )
    distillation = DistillationConfig(alpha=0.4, ramp=True)
    result = fit(
        _Kwargs(takes_alpha=True),
        [parity_batch(i) for i in range(4)],
        cfg,
        output_dir=tmp_path,
        step_inputs=distillation.step_inputs,
    )
    assert [row["alpha"] for row in result["steps"]] == pytest.approx(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4]
    )
    # per epoch: the value at the epoch's last step, like the lr (not a mean, not a loss term)
    assert [epoch["alpha"] for epoch in result["history"]] == pytest.approx([0.3, 0.4])
    plain = fit(
        _Kwargs(takes_alpha=False), [parity_batch(i) for i in range(4)], cfg, output_dir=tmp_path / "plain"
    )
    assert "alpha" not in plain["history"][0] and "alpha" not in plain["steps"][0]
