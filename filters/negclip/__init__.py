"""negCLIPLoss and NormSim (Wang et al.): CLIP-score corrections and target-set similarity."""
