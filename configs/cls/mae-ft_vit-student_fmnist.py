# MAE baseline on Fashion-MNIST: the MAE-pre-trained 48-d student fine-tuned without a
# teacher (same recipe as configs/cls/g2sd-ft_vit-student_fmnist.py).
_base_ = ['./g2sd-ft_vit-student_fmnist.py']
model = dict(pretrained={{_base_.fmnist_mae_student_checkpoint}})
