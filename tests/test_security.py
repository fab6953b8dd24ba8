"""No resume / load path runs code from a checkpoint (issue #7 §1).

The gadget is built here: a ``torch.save`` file whose pickle references only
``builtins.getattr`` and mmengine's ``HistoryBuffer``, and which, if fully unpickled, walks
``HistoryBuffer.__init__.__globals__`` to ``eval`` and creates a marker file. It is handed
to ``tools/train.py --resume FILE``, to auto-resume (``last_checkpoint`` pointing at it) and
to ``load_from``: each must refuse it with a clear error and leave no marker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from mmengine.logging import HistoryBuffer

from g2sd.checkpoint import CheckpointError

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / 'tools' / 'train.py'


class _Call:
    """Pickles as ``fn(*args)``; callable so that it can itself be the ``fn`` of another."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __call__(self, *args):  # never called here; pickle only needs it callable
        raise AssertionError('not for calling')

    def __reduce__(self):
        return self.fn, self.args


def write_gadget(path: Path, marker: Path) -> None:
    init = _Call(getattr, HistoryBuffer, '__init__')
    module_globals = _Call(getattr, init, '__globals__')
    builtins_dict = _Call(_Call(getattr, module_globals, 'get'), '__builtins__')
    evaluate = _Call(_Call(getattr, builtins_dict, 'get'), 'eval')
    payload = _Call(evaluate, f'open({str(marker)!r}, "w").close()')
    torch.save(
        dict(meta=dict(epoch=0, iter=2), state_dict={}, message_hub=payload),
        path,
    )


def test_gadget_is_real_and_uses_only_allowed_looking_globals(tmp_path):
    gadget, marker = tmp_path / 'iter_2.pth', tmp_path / 'PWNED'
    write_gadget(gadget, marker)
    names = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(gadget)))
    assert names == {'builtins.getattr', 'mmengine.logging.history_buffer.HistoryBuffer'}
    torch.load(gadget, weights_only=False)  # what the old resume did: runs the payload
    assert marker.exists()


TOY_CONFIG = """
default_scope = 'g2sd'
custom_imports = dict(imports=['g2sd.engine'], allow_failed_imports=False)
model = dict(
    type='g2sd.PretrainModel',
    algorithm=dict(type='g2sd.MAEPretrainer', student=dict(
        type='g2sd.MaskedAutoencoderViT', img_size=8, patch_size=4, in_chans=1, embed_dim=8,
        depth=1, num_heads=1, decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=1)),
)
train_dataloader = dict(
    dataset=dict(type='g2sd.FashionMNIST', num_samples=10, pipeline=[
        dict(type='Resize', size=8), dict(type='ToTensor')]),
    sampler=dict(type='DefaultSampler', shuffle=True), batch_size=5, num_workers=0,
    collate_fn=dict(type='default_collate'))
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-3))
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1))
"""


@pytest.fixture()
def toy(tmp_path, fmnist_root):
    cfg = tmp_path / 'toy.py'
    cfg.write_text(textwrap.dedent(TOY_CONFIG))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('LOCAL_RANK', None)
    return cfg, env


def _train(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_train_resume_file_refuses_gadget(tmp_path, toy):
    cfg, env = toy
    gadget, marker = tmp_path / 'evil.pth', tmp_path / 'PWNED'
    write_gadget(gadget, marker)
    proc = _train(
        [str(cfg), '--resume', str(gadget), '--work-dir', str(tmp_path / 'wd')], env, tmp_path
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert 'CheckpointError' in out and 'evil.pth' in out, out[-3000:]
    assert 'cannot be read safely: Trying to call reduce' in out, out[-3000:]
    assert not marker.exists()


def test_auto_resume_refuses_gadget(tmp_path, toy):
    cfg, env = toy
    wd = tmp_path / 'wd'
    wd.mkdir()
    marker = tmp_path / 'PWNED'
    write_gadget(wd / 'iter_2.pth', marker)
    (wd / 'last_checkpoint').write_text(str(wd / 'iter_2.pth'))
    proc = _train([str(cfg), '--resume', '--work-dir', str(wd)], env, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert 'CheckpointError' in out and 'iter_2.pth' in out, out[-3000:]
    assert not marker.exists()


def test_load_from_and_loader_refuse_gadget(tmp_path, toy):
    from g2sd.checkpoint import load_file

    cfg, env = toy
    gadget, marker = tmp_path / 'evil.pth', tmp_path / 'PWNED'
    write_gadget(gadget, marker)
    proc = _train(
        [str(cfg), '--work-dir', str(tmp_path / 'wd'), '--cfg-options', f'load_from={gadget}'],
        env,
        tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert 'builtins.getattr' in out and 'load_from takes plain weights' in out, out[-3000:]
    # untrusted: the globals are named; trusted (resume): HistoryBuffer and getattr are inert
    # stand-ins, so the chain ends in a call of a non-function, which is named
    expected = {
        False: r'not on the safe list: builtins\.getattr, '
        r'mmengine\.logging\.history_buffer\.HistoryBuffer;',
        True: r'cannot be read safely: Trying to call reduce for unrecognized function',
    }
    for trusted, pattern in expected.items():
        with pytest.raises(CheckpointError, match=pattern) as err:
            load_file(gadget, trusted=trusted)
        assert 'weights_only=False' not in str(err.value)
        assert 'corrupt' not in str(err.value)
    assert not marker.exists()
