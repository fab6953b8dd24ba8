# G2SD ViT-Ti UperNet on ADE20K (Huang et al., "Generic-to-Specific Distillation of Masked
# Autoencoders", CVPR 2023, arXiv 2302.14771): upernet_g2sd_s.py (CWD from the MAE-B UperNet
# teacher, the official G2SD_seg_dis recipe) with the GD ViT-Ti student (192-d, 3 heads).
# lr 1e-4 and layer decay 0.65 as in the official scripts (distill_cwd_b2t.py); the paper may
# list 5e-4 / 0.75 for Ti (G2SD issue #2, whose "paper settings" run also used batch 4 x 8,
# which the authors called a writing mistake: 2 x 8).
_base_ = ['./upernet_g2sd_s.py']
model = dict(student={{_base_.upernet_ti_gd}})
