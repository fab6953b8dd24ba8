"""The classification tools: --help, test.py (robustness folders), timm export, benchmarks,
and a train -> test run of the Fashion-MNIST SD config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from g2sd.cls import DistilledVisionTransformer, ViTClassifier
from g2sd.cls.metrics import imagenet_class_indices
from g2sd.models import VisionTransformer

REPO = Path(__file__).resolve().parents[1]
TOOLS = {
    'test': REPO / 'tools' / 'test.py',
    'export': REPO / 'tools' / 'convert' / 'export_cls_timm.py',
    'sd_step': REPO / 'tools' / 'benchmark' / 'sd_step.py',
    'throughput': REPO / 'tools' / 'benchmark' / 'throughput.py',
    'demo_cls': REPO / 'tools' / 'demo_cls.py',
}


def run(*args: str, ok: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    if ok and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}')
    return proc


@pytest.mark.parametrize('tool', sorted(TOOLS))
def test_help(tool: str) -> None:
    out = run(TOOLS[tool], '--help').stdout
    assert out.startswith('usage:')


# ------------------------------------------------------------------------ tools/test.py
KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=1000)
PIPE = [dict(type='Resize', size=32), dict(type='ToTensor')]

TEST_CONFIG = """
default_scope = 'g2sd'
custom_imports = dict(imports=['g2sd.engine', 'g2sd.distill', 'g2sd.cls'])
student = dict(
    type='g2sd.ViTClassifier',
    backbone=dict(type='g2sd.DistilledVisionTransformer', img_size=32, patch_size=8,
                  embed_dim=32, depth=2, num_heads=2, num_classes=1000),
    data_preprocessor=dict(type='g2sd.ClsDataPreprocessor', num_classes=1000),
)
model = {model}
pipeline = [dict(type='Resize', size=32), dict(type='ToTensor')]
test_dataloader = dict(
    batch_size=4, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='g2sd.ImageFolder', root='{val}', pipeline=pipeline))
test_evaluator = dict(type='g2sd.TopKAccuracy', topk=(1, 5), class_map='imagenet')
test_cfg = dict(type='TestLoop')
default_hooks = dict(logger=dict(type='LoggerHook', interval=1))
"""


def make_tree(root: Path, classes: list[str], per_class: int = 3) -> Path:
    rng = np.random.default_rng(len(classes))
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f'{i}.png')
    return root


def expected_accuracy(model: DistilledVisionTransformer, root: Path) -> tuple[float, float]:
    """Independent top-1 / top-5 of a folder: logits restricted to the folder's classes."""
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(32), T.ToTensor()])
    classes = sorted(p.name for p in root.iterdir())
    cols = imagenet_class_indices(classes)
    hits1 = hits5 = n = 0
    model.eval()
    with torch.no_grad():
        for label, c in enumerate(classes):
            for f in sorted((root / c).iterdir()):
                x = tf(Image.open(f).convert('RGB'))[None]
                scores = model(x)[0][cols]
                order = scores.argsort(descending=True).tolist()
                hits1 += order[0] == label
                hits5 += label in order[:5]
                n += 1
    return 100.0 * hits1 / n, 100.0 * hits5 / n


def test_test_tool_reports_val_and_robustness_sets(tmp_path: Path) -> None:
    val = make_tree(tmp_path / 'val', ['n01440764', 'n01443537', 'n01484850'])
    ina = make_tree(tmp_path / 'imagenet-a', ['n01498041', 'n01531178', 'n12267677'])
    v2 = make_tree(tmp_path / 'v2', ['0', '1', '10', '2', '5', '7'], per_class=2)
    torch.manual_seed(0)
    backbone = DistilledVisionTransformer(**KW)
    with torch.no_grad():  # make the logits informative enough to differ across classes
        backbone.head.weight.normal_(0, 1.0)
        backbone.head_dist.weight.normal_(0, 1.0)
    clf = ViTClassifier(backbone=backbone)
    ckpt = tmp_path / 'epoch_1.pth'
    # A distillation-wrapper training checkpoint: student.* keys + an adapter + mmengine meta.
    sd = {f'student.{k}': v for k, v in clf.state_dict().items()}
    sd['adapters.x.weight'] = torch.zeros(1)
    torch.save({'state_dict': sd, 'meta': {'epoch': 1}, 'message_hub': {}}, ckpt)
    wrapper = (
        "dict(type='g2sd.DistillModel', student=student, teacher=dict(type='g2sd."
        "VisionTransformer'), teacher_checkpoint='/nonexistent/teacher.pth')"
    )
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(TEST_CONFIG.format(model=wrapper, val=val))
    out = tmp_path / 'res.json'
    proc = run(
        TOOLS['test'], cfg, ckpt, '--work-dir', tmp_path / 'wd', '--out', out,
        '--imagenet-a', ina, '--imagenet-v2', v2,
    )  # fmt: skip
    res = json.loads(out.read_text())
    assert set(res) == {'test', 'imagenet-a', 'imagenet-v2'}
    for name, root in (('test', val), ('imagenet-a', ina), ('imagenet-v2', v2)):
        top1, top5 = expected_accuracy(backbone, root)
        prefix = '' if name == 'test' else f'{name}/'
        assert res[name][f'{prefix}top1'] == pytest.approx(top1), name
        assert res[name][f'{prefix}top5'] == pytest.approx(top5), name
    assert 'imagenet-a' in proc.stdout and 'top-1' in proc.stdout


def test_test_tool_refuses_a_wrong_checkpoint(tmp_path: Path) -> None:
    val = make_tree(tmp_path / 'val', ['n01440764'], per_class=1)
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(TEST_CONFIG.format(model='student', val=val))
    other = VisionTransformer(**{**KW, 'embed_dim': 16})
    ckpt = tmp_path / 'wrong.pth'
    torch.save(other.state_dict(), ckpt)
    proc = run(TOOLS['test'], cfg, ckpt, '--work-dir', tmp_path / 'wd', ok=False)
    assert proc.returncode != 0 and 'does not fit' in proc.stderr


# ------------------------------------------------------------------------------ export
@pytest.mark.parametrize('dist_head', ['keep', 'drop'])
def test_export_cls_timm(tmp_path: Path, dist_head: str) -> None:
    import timm

    import g2sd.cls.timm_models  # noqa: F401
    import g2sd.models.timm_models  # noqa: F401

    torch.manual_seed(0)
    m = DistilledVisionTransformer(
        patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=10,
        dist_token_position='deit',
    )  # fmt: skip
    with torch.no_grad():
        m.head.weight.normal_(0, 0.5)
        m.head_dist.weight.normal_(0, 0.5)
    ckpt = tmp_path / 'student.pth'
    torch.save(ViTClassifier(backbone=m).export_student(), ckpt)  # SaveStudentHook format
    out = tmp_path / f'out_{dist_head}.safetensors'
    proc = run(TOOLS['export'], ckpt, out, '--dist-head', dist_head)
    assert 'verified' in proc.stdout
    meta = proc.stdout.split('create_model(')[1]
    if dist_head == 'keep':
        name = 'g2sd_vit_tiny_distilled_patch16_224.gd_sd_in1k'
        kwargs = dict(num_classes=10, dist_token_position='deit')
        m.eval_output = 'avg'
        ref = m
    else:
        name = 'g2sd_vit_tiny_patch16_224.gd_sd_in1k'
        kwargs = dict(num_classes=10)
        # Dropping the token changes every token's attention: the export is a plain ViT with
        # the distilled weights (a backbone), not the distilled model's class head.
        ref = VisionTransformer(patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=10)
        plain = {
            k: v for k, v in m.state_dict().items() if not k.startswith(('dist_', 'head_dist'))
        }
        ref.load_state_dict(plain, strict=True)
        assert 'not the class-head output' in proc.stderr
    assert meta.startswith(repr(name))
    model = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out), num_classes=10), **kwargs
    ).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.eval()(x), rtol=1e-5, atol=1e-5)


def test_export_refuses_keep_without_dist_head(tmp_path: Path) -> None:
    plain = VisionTransformer(patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=10)
    ckpt = tmp_path / 'plain.pth'
    torch.save(plain.state_dict(), ckpt)
    proc = run(TOOLS['export'], ckpt, tmp_path / 'o.pth', '--dist-head', 'keep', ok=False)
    assert proc.returncode != 0 and '--dist-head drop' in proc.stderr


# -------------------------------------------------------------------------- benchmarks
def test_benchmarks_run(tmp_path: Path) -> None:
    tiny = ['--img-size', '32', '--depth', '1', '--iters', '1', '--warmup', '1']
    proc = run(TOOLS['throughput'], '--batch-size', '2', *tiny, '--json', tmp_path / 't.json')
    rows = json.loads((tmp_path / 't.json').read_text())['rows']
    assert [r['key'] for r in rows] == ['ti', 's', 'b'] and rows[2]['speedup'] == 1.0
    assert 'vs ViT-B' in proc.stdout and '5.84x' in proc.stdout
    proc = run(TOOLS['sd_step'], '--student', 'ti', '--batch-size', '2', *tiny)
    assert 'SD (student + ViT-B teacher)' in proc.stdout and 'teacher share' in proc.stdout


# ------------------------------------------------------- train -> test on Fashion-MNIST
def test_fmnist_sd_train_then_test(tmp_path: Path, fmnist_root: Path) -> None:
    torch.manual_seed(0)
    teacher = VisionTransformer(
        img_size=28, patch_size=4, in_chans=1, embed_dim=96, depth=6, num_heads=3,
        num_classes=10, global_pool='avg',
    )  # fmt: skip
    torch.save(teacher.state_dict(), tmp_path / 'teacher.pth')
    gd = VisionTransformer(
        img_size=28, patch_size=4, in_chans=1, embed_dim=48, depth=4, num_heads=3, num_classes=0
    )
    torch.save(gd.state_dict(), tmp_path / 'gd_student.pth')
    wd = tmp_path / 'work'
    cfg = REPO / 'configs' / 'cls' / 'g2sd-sd_vit-student_fmnist.py'
    opts = [
        f'model.teacher_checkpoint={tmp_path / "teacher.pth"}',
        f'model.student.pretrained={tmp_path / "gd_student.pth"}',
        f'train_dataloader.dataset.root={fmnist_root}',
        f'val_dataloader.dataset.root={fmnist_root}',
        'train_dataloader.dataset.num_samples=40',
        'train_dataloader.batch_size=20',
        'val_dataloader.dataset.num_samples=30',
        'train_cfg.max_epochs=1',
        'default_hooks.logger.interval=1',
    ]
    run(REPO / 'tools' / 'train.py', cfg, '--work-dir', wd, '--cfg-options', *opts, timeout=600)
    log = next(wd.glob('*/*.log')).read_text()
    assert 'distill.loss_hard_kd' in log and 'TeacherCheckHook' in log
    assert 'TeacherValHook (30 images): teacher/top1' in log
    student = wd / 'student.pth'
    assert student.exists() and (wd / 'epoch_1.pth').exists()
    # The pre-trained GD encoder was loaded into the student before training started.
    assert 'loaded' in log and 'gd_student.pth' in log
    out = tmp_path / 'res.json'
    for ckpt in (wd / 'epoch_1.pth', student):
        run(
            TOOLS['test'], cfg, ckpt, '--work-dir', tmp_path / 'test', '--out', out,
            '--cfg-options', f'test_dataloader.dataset.root={fmnist_root}',
            'test_dataloader.dataset.num_samples=30',
            f'model.teacher_checkpoint={tmp_path}/none.pth',
        )  # fmt: skip
        res = json.loads(out.read_text())['test']
        assert 0.0 <= res['top1'] <= 100.0 and res['top5'] >= res['top1']


@pytest.mark.slow
def test_demo_cls_smoke(tmp_path: Path, fmnist_root: Path) -> None:
    """The four ablation rows + teacher, end to end, from (random) pre-trained encoders."""
    from g2sd.models import MaskedAutoencoderViT

    torch.manual_seed(0)
    enc = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=48, depth=4, num_heads=3)
    for name in ('mae_student', 'g2sd_student'):
        (tmp_path / name).mkdir()
        torch.save(
            VisionTransformer(num_classes=0, **enc).state_dict(), tmp_path / name / 'student.pth'
        )
    mae = MaskedAutoencoderViT(
        img_size=28, patch_size=4, in_chans=1, embed_dim=96, depth=6, num_heads=3,
        decoder_embed_dim=64, decoder_depth=4, decoder_num_heads=4,
    )  # fmt: skip
    torch.save(mae.state_dict(), tmp_path / 'mae_teacher.pth')
    if str(fmnist_root) != '/usr/share/datasets/fashion-mnist':
        pytest.skip('the demo reads Fashion-MNIST from its default folder')
    proc = run(
        TOOLS['demo_cls'], '--work-dir', tmp_path, '--epochs', '1', '--teacher-epochs', '1',
        '--train-samples', '40', '--teacher-samples', '40', '--test-samples', '20',
        '--batch-size', '20', '--mae-teacher', tmp_path / 'mae_teacher.pth', timeout=900,
    )  # fmt: skip
    table = proc.stdout.splitlines()
    for row in ('teacher (96-d, fine-tuned)', 'MAE ', 'MAE + SD', 'G2SD w/o SD', 'G2SD '):
        assert any(line.startswith(row) for line in table), row
    assert (tmp_path / 'cls' / 'results.txt').exists()
