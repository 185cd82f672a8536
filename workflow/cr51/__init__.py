"""cr51: chromium-51 release assay analysis (NK-cell lysis, IVIG suppression, relative potency)."""

__version__ = "0.1.0"
