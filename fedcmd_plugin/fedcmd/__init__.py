"""FedCMD: Wasserstein-based selection of the personalized layer and similarity-weighted aggregation."""
