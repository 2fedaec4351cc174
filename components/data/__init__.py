"""Raw data: the contract, the synthetic generator, validation and ingestion."""
