# "MAE + S.D." on Fashion-MNIST: the MAE-pre-trained 48-d student fine-tuned with specific
# distillation (same as configs/cls/g2sd-sd_vit-student_fmnist.py, other initialisation).
_base_ = ['./g2sd-sd_vit-student_fmnist.py']
model = dict(student=dict(pretrained={{_base_.fmnist_mae_student_checkpoint}}))
