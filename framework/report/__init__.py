"""Results: the typed, versioned RunResult and its files (result.json, the analysis), JUnit XML, terminal lines."""
