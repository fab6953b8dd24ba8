# Classification models of the Fashion-MNIST mini runs (28x28 gray, patch 4 -> 49 tokens).
# Student: the 48-d / 4-block / 3-head encoder of configs/_base_/models/fmnist_vits.py, with a
# distillation token for SD. Teacher: the 96-d / 6-block MAE teacher encoder, global average
# pooling + fc_norm (MAE fine-tuning), fine-tuned by configs/cls/mae-ft_vit-teacher_fmnist.py.
fmnist_num_classes = 10
fmnist_cls_student = dict(
    type='g2sd.VisionTransformer',
    img_size=28,
    patch_size=4,
    in_chans=1,
    embed_dim=48,
    depth=4,
    num_heads=3,
    num_classes=10,
    global_pool='token',
    drop_path_rate=0.0,
)
fmnist_cls_student_dist = dict(
    fmnist_cls_student, type='g2sd.DistilledVisionTransformer', dist_token_position='end'
)
fmnist_cls_teacher = dict(
    type='g2sd.VisionTransformer',
    img_size=28,
    patch_size=4,
    in_chans=1,
    embed_dim=96,
    depth=6,
    num_heads=3,
    num_classes=10,
    global_pool='avg',
)
# The teacher while it is fine-tuned (MAE recipe: drop path 0.1).
fmnist_cls_teacher_ft = dict(fmnist_cls_teacher, drop_path_rate=0.1)
# mixup 0.8 / cutmix 1.0 / smoothing 0.1 (the ImageNet recipe) on the batch, before the model.
fmnist_cls_preprocessor = dict(
    type='g2sd.ClsDataPreprocessor',
    num_classes=10,
    mixup_alpha=0.8,
    cutmix_alpha=1.0,
    prob=1.0,
    switch_prob=0.5,
    label_smoothing=0.1,
)
# Inputs of the classification runs (tools/train.py writes to work_dirs/<config name>/):
fmnist_gd_student_checkpoint = 'work_dirs/g2sd-gd_vit-student_fmnist/student.pth'
fmnist_mae_student_checkpoint = 'work_dirs/mae_vit-student_fmnist/student.pth'
fmnist_mae_teacher_checkpoint = 'checkpoints/fmnist_mae_vit-teacher.pth'
# shipped, made by configs/cls/mae-ft_vit-teacher_fmnist.py (78.84% top-1 on the test set)
fmnist_cls_teacher_checkpoint = 'checkpoints/fmnist_vit-teacher_cls.pth'
