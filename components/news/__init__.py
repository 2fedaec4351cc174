"""News recommendation on the MIND format: PerCoNet (explicit persona, cross-view contrast) and NRMS."""
