# The G2SD segmentation teacher's own config: MAE ViT-B UperNet 160k on ADE20K from MAE's
# mae_pretrain_vit_base.pth (MAE paper 48.1 mIoU; mmseg zoo 48.13, whose file
# upernet_mae-base_fp16_8x2_512x512_160k_ade20k_20220426_174752-f92a2975.pth is the teacher of
# upernet_g2sd_{s,ti}.py). Here with G2SD_seg_dis's values (slide stride 341; mmseg: 256).
_base_ = [
    '../_base_/models/upernet_vit.py',
    '../_base_/datasets/ade20k_512.py',
    '../_base_/schedules/seg_160k.py',
]
model = {{_base_.upernet_b_mae}}
