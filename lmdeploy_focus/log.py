"""The plugin's logger: a child of LMDeploy's ``lmdeploy`` logger, so ``--log-level`` applies."""
import logging

logger = logging.getLogger('lmdeploy.focus')
