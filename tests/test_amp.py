"""AMP that is right for the device (g2sd.engine.amp, configure_amp) and the AMP teacher.

Detection answers are forced (monkeypatched), so every branch runs on any machine.
"""

from __future__ import annotations

import logging
import uuid

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper, build_optim_wrapper

from g2sd.distill import G2SDDistiller
from g2sd.engine import amp
from g2sd.engine.optim import CPUAmpOptimWrapper
from g2sd.engine.runner import configure_amp
from g2sd.models import MaskedAutoencoderViT


@pytest.fixture
def records(monkeypatch) -> list[logging.LogRecord]:
    """Log records of a fresh current MMLogger; the once-only memory is emptied."""
    monkeypatch.setattr(amp, '_LOGGED', set())
    logger = MMLogger.get_instance(f'amp_{uuid.uuid4().hex[:8]}')
    got: list[logging.LogRecord] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    logger.addHandler(Grab())
    return got


def cfg_with(**ow) -> Config:
    return Config(dict(optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1), **ow)))


def force(monkeypatch, cuda: bool, cpu_fast: bool | None = None, gpu_bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    if cpu_fast is not None:
        evidence = 'CPU flag avx512_bf16' if cpu_fast else "CPU capability 'AVX2', no flag"
        monkeypatch.setattr(amp, 'cpu_bf16_support', lambda: (cpu_fast, evidence))
    monkeypatch.setattr(amp, 'cuda_bf16_support', lambda: gpu_bf16)


def test_cpu_without_fast_bf16_warns_and_trains_fp32(monkeypatch, records):
    force(monkeypatch, cuda=False, cpu_fast=False)
    cfg = cfg_with()
    assert configure_amp(cfg, enable=True) == 'OptimWrapper'
    assert 'dtype' not in cfg.optim_wrapper
    warned = [r for r in records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    msg = warned[0].getMessage()
    assert 'no fast bf16' in msg and "'AVX2'" in msg and 'fp32' in msg
    ow = build_optim_wrapper(torch.nn.Linear(2, 2), cfg.optim_wrapper.to_dict())
    assert type(ow) is OptimWrapper
    # a GPU recipe (AmpOptimWrapper, loss_scale) falls back the same way, logged only once
    cfg = cfg_with(type='AmpOptimWrapper', loss_scale='dynamic', dtype='float16')
    assert configure_amp(cfg) == 'OptimWrapper'
    assert 'loss_scale' not in cfg.optim_wrapper and 'dtype' not in cfg.optim_wrapper
    assert len([r for r in records if r.levelno == logging.WARNING]) == 1


def test_cpu_with_fast_bf16_uses_cpu_autocast(monkeypatch, records):
    force(monkeypatch, cuda=False, cpu_fast=True)
    cfg = cfg_with()
    assert configure_amp(cfg, enable=True) == 'g2sd.CPUAmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'
    (info,) = records
    assert info.levelno == logging.INFO and 'avx512_bf16' in info.getMessage()
    ow = build_optim_wrapper(torch.nn.Linear(2, 2), cfg.optim_wrapper.to_dict())
    assert type(ow) is CPUAmpOptimWrapper
    # fp16 asked for on CPU: bf16, with a warning
    cfg = cfg_with(type='AmpOptimWrapper', dtype='float16', loss_scale=512.0)
    assert configure_amp(cfg) == 'g2sd.CPUAmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16' and 'loss_scale' not in cfg.optim_wrapper
    assert records[-1].levelno == logging.WARNING and 'float16' in records[-1].getMessage()
    assert configure_amp(cfg_with()) is None  # no --amp, no AMP config: unchanged


@pytest.mark.parametrize(
    ('dtype', 'gpu_bf16', 'expected', 'warns'),
    [
        (None, True, 'float16', False),
        ('float16', True, 'float16', False),
        ('bfloat16', True, 'bfloat16', False),
        ('bfloat16', False, 'float16', True),
    ],
)
def test_cuda_dtype(monkeypatch, records, dtype, gpu_bf16, expected, warns):
    force(monkeypatch, cuda=True, gpu_bf16=gpu_bf16)
    cfg = cfg_with(dtype=dtype) if dtype else cfg_with()
    assert configure_amp(cfg, enable=True) == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == expected and cfg.optim_wrapper.loss_scale == 'dynamic'
    levels = [r.levelno for r in records]
    assert (logging.WARNING in levels) == warns


def test_bad_amp_dtype_is_refused(monkeypatch):
    force(monkeypatch, cuda=False, cpu_fast=True)
    with pytest.raises(ValueError, match='float64'):
        configure_amp(cfg_with(dtype='float64'), enable=True)


@pytest.mark.parametrize(
    ('flags', 'capability', 'fast'),
    [
        ({'avx512f', 'avx512_bf16'}, 'AVX512', True),
        ({'amx_bf16', 'amx_tile'}, 'AVX512', True),
        ({'avx2'}, 'AVX2', False),
        (set(), 'AMX', True),  # no /proc/cpuinfo (not Linux): the capability decides
        (set(), 'DEFAULT', False),
    ],
)
def test_cpu_bf16_detection(monkeypatch, flags, capability, fast):
    monkeypatch.delenv('G2SD_CPU_BF16', raising=False)
    monkeypatch.setattr(amp, '_cpu_flags', lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: capability)
    amp.cpu_bf16_support.cache_clear()
    try:
        got, evidence = amp.cpu_bf16_support()
    finally:
        amp.cpu_bf16_support.cache_clear()
    assert got is fast
    assert capability in evidence


# ------------------------------------------------------------------ the AMP teacher
def tiny_g2sd() -> tuple[G2SDDistiller, torch.Tensor]:
    torch.manual_seed(0)
    s = MaskedAutoencoderViT(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, pixel_head=False,
    )  # fmt: skip
    t = MaskedAutoencoderViT(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2,
        decoder_embed_dim=24, decoder_depth=2, decoder_num_heads=2,
    )  # fmt: skip
    model = G2SDDistiller(student=s, teacher=t, allow_random_teacher=True, target_block=1)
    imgs = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, imgs


def loss_of(model: G2SDDistiller, imgs: torch.Tensor, autocast: bool) -> torch.Tensor:
    torch.manual_seed(2)  # the mask
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        return model(imgs)['loss_gd']


def test_fp32_loss_unchanged():
    model, imgs = tiny_g2sd()
    assert model.teacher_amp_weights is False  # the default
    model.teacher_amp_weights = True  # even when on, fp32 is untouched
    # literal value of this batch, computed before the AMP-teacher change
    assert loss_of(model, imgs, False).item() == pytest.approx(0.31458580493927, abs=1e-6)
    assert model._teacher_casts is None  # fp32 never makes AMP copies


def test_amp_teacher_weights_match_autocast_and_are_made_once():
    model, imgs = tiny_g2sd()
    model.teacher_amp_weights = False
    plain = loss_of(model, imgs, True)
    model.teacher_amp_weights = True
    held = loss_of(model, imgs, True)
    assert held.item() == plain.item()  # same rounding as autocast's own casts
    ((key, (_, casts)),) = model._teacher_casts.items()
    assert key == ('cpu', torch.bfloat16)
    assert all(w.dtype == torch.bfloat16 for _, _, w in casts)
    linears = [m for m in model.teacher.modules() if type(m) in (torch.nn.Linear, torch.nn.Conv2d)]
    assert len(casts) == sum(m.bias is not None for m in linears) + len(linears)
    first = [w.data_ptr() for _, _, w in casts]
    loss_of(model, imgs, True)
    assert [w.data_ptr() for _, _, w in model._teacher_casts[key][1]] == first  # reused
    # the teacher itself is untouched (fp32, frozen) outside the AMP block
    assert all(p.dtype == torch.float32 for p in model.teacher.parameters())
    # new teacher weights (in place) are picked up
    with torch.no_grad():
        model.teacher.blocks[0].mlp.fc1.weight.mul_(2.0)
    changed = loss_of(model, imgs, True)
    model.teacher_amp_weights = False
    assert changed.item() == loss_of(model, imgs, True).item() != held.item()


def test_amp_close_to_fp32_loss_and_grads():
    model, imgs = tiny_g2sd()
    grads = {}
    for autocast in (False, True):
        model.zero_grad(set_to_none=True)
        loss = loss_of(model, imgs, autocast)
        loss.backward()
        grads[autocast] = (
            loss.detach(),
            [p.grad.clone() for p in model.parameters() if p.requires_grad],
        )
    (l32, g32), (l16, g16) = grads[False], grads[True]
    torch.testing.assert_close(l16, l32, rtol=2e-2, atol=1e-3)
    for a, b in zip(g16, g32):
        assert a.dtype == torch.float32
        # bf16 has 8 mantissa bits: relative error of the whole gradient tensor ~1e-2
        assert (a - b).norm() <= 5e-2 * b.norm() + 1e-6


# ------------------------------------------------------------------------ CUDA
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_cuda_amp_step_on_the_flash_path(dtype):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if dtype == 'bfloat16' and not torch.cuda.is_bf16_supported():
        pytest.skip('this GPU has no bf16')
    cfg = cfg_with(type='AmpOptimWrapper', dtype=dtype)
    assert configure_amp(cfg) == 'AmpOptimWrapper' and cfg.optim_wrapper.dtype == dtype
    model, imgs = tiny_g2sd()
    model, imgs = model.cuda(), imgs.cuda()
    model.teacher_amp_weights = True
    ow = build_optim_wrapper(model, cfg.optim_wrapper.to_dict())
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if the flash kernel cannot run
        log = model.train_step(dict(inputs=imgs), ow)
    assert torch.isfinite(log['loss'])
    ((key, (_, casts)),) = model._teacher_casts.items()
    assert key == ('cuda', getattr(torch, dtype))
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert all(p.dtype == torch.float32 for p in model.teacher.parameters())


def test_cpu_amp_training_attention_matches_sdpa(monkeypatch):
    from g2sd.models import vit

    attn = vit.Attention(32, num_heads=4)
    x = torch.randn(2, 9, 32, requires_grad=True)
    assert not vit._explicit_attention(attn.get_qkv(x).q)  # fp32: always SDPA
    outs = {}
    for explicit in (True, False):
        monkeypatch.setattr(vit, 'CPU_AMP_EXPLICIT_ATTENTION', explicit)
        x.grad = None
        with torch.autocast('cpu', dtype=torch.bfloat16):
            q = attn.get_qkv(x).q
            assert vit._explicit_attention(q) is explicit
            out = attn(x)
        out.float().square().sum().backward()
        outs[explicit] = (out.float().detach(), x.grad.clone())
    torch.testing.assert_close(outs[True][0], outs[False][0], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(outs[True][1], outs[False][1], atol=5e-2, rtol=5e-2)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert not vit._explicit_attention(attn.get_qkv(x).q)  # inference (teacher): SDPA


def test_amp_uses_fused_adamw(monkeypatch, records):
    force(monkeypatch, cuda=False, cpu_fast=True)
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3))))
    configure_amp(cfg, enable=True)
    assert cfg.optim_wrapper.optimizer.fused is True
    ow = build_optim_wrapper(torch.nn.Linear(2, 2), cfg.optim_wrapper.to_dict())
    assert ow.optimizer.defaults['fused'] is True
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3, foreach=False))))
    configure_amp(cfg, enable=True)
    assert 'fused' not in cfg.optim_wrapper.optimizer  # the config's choice stays
    force(monkeypatch, cuda=False, cpu_fast=False)  # fp32 fallback: optimizer untouched
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3))))
    configure_amp(cfg, enable=True)
    assert 'fused' not in cfg.optim_wrapper.optimizer


@pytest.mark.parametrize(('value', 'fast'), [('1', True), ('0', False)])
def test_cpu_bf16_env_override(monkeypatch, value, fast):
    monkeypatch.setenv('G2SD_CPU_BF16', value)
    amp.cpu_bf16_support.cache_clear()
    try:
        assert amp.cpu_bf16_support() == (fast, f'G2SD_CPU_BF16={value}')
        monkeypatch.setenv('G2SD_CPU_BF16', 'yes')
        amp.cpu_bf16_support.cache_clear()
        with pytest.raises(ValueError, match="'yes'"):
            amp.cpu_bf16_support()
    finally:
        amp.cpu_bf16_support.cache_clear()
