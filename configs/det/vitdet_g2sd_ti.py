# G2SD ViT-Ti ViTDet Mask R-CNN on COCO (Huang et al., "Generic-to-Specific Distillation of
# Masked Autoencoders", CVPR 2023, arXiv 2302.14771): vitdet_g2sd_s.py (FRS from the ViTDet-B
# teacher, the official G2SD_det_dis recipe) with the GD ViT-Ti student (192-d, 3 heads).
_base_ = ['./vitdet_g2sd_s.py']
model = dict(student={{_base_.vitdet_ti_gd}})
