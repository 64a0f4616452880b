"""Data: label vocabulary, synthetic CrisisLandMark archive writer, dataset builders."""
