"""Sample-quality metrics (FID, IS) and the feature networks they are computed on."""
