"""Local emulator of Definite's Stream API (POST /v2/stream) writing into a real DuckLake."""

__version__ = "1.0.0"
