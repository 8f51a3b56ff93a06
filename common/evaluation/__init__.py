"""Restoring images and measuring them: what ``test.py``, training's validation and the demo's
verdict share.

``inference`` runs the generator on a whole image (in tiles where it does not fit), ``metrics`` holds
PSNR, SSIM and LPIPS, ``evaluate`` restores a list of pairs and scores them, ``restorer`` restores one
image from any script (``common.restore_image``, ``common.Restorer``), ``figures`` draws the
pictures (side by side, samples, curves) and ``report`` renders the report pages from ``templates/``.
``onnx_export`` writes the generator as an ONNX file for use outside Python (``test.py --export-onnx``).
"""
