"""Bundled real brain scRNA-seq data sets (raw counts with the authors' labels)."""

from ._bundled import lamanno_midbrain_dopaminergic, zeisel_brain, zeisel_brain_all_genes

__all__ = ["lamanno_midbrain_dopaminergic", "zeisel_brain", "zeisel_brain_all_genes"]
