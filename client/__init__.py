"""Clients of the denoising service. They need only httpx and tqdm, never the server's packages."""
