"""phinetune: fine-tune Microsoft Phi models with no silent misconfiguration."""

__version__ = "0.1.0"
