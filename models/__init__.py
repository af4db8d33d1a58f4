"""Which weights exist, where they live, how they are downloaded and loaded."""
