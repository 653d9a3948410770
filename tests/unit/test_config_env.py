"""Configuration that cannot be mistyped: unknown PERSONALIZE_* variables and flags stop
start-up with a message naming them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.contract.config import (
    CREDENTIALS,
    OTHER_VARIABLES,
    ConfigError,
    check_environment,
    load,
    recordable_environment,
    setting_names,
)
from services.server.config import ServerConfig
from trainer.config import TrainerConfig


def test_known_settings_load() -> None:
    cfg = load(ServerConfig, "server", env={"PERSONALIZE_SERVER_PORT": "7001",
                                             "PERSONALIZE_SERVER_ENGINE_MAX_LORAS": "3",
                                             "PERSONALIZE_TRAINER_GROUP_ID": "g",
                                             "PERSONALIZE_TOKEN": "t", "HOME": "/x"})
    assert cfg.port == 7001 and cfg.engine.max_loras == 3


def test_a_typo_in_the_section_is_named_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as err:
        load(ServerConfig, "server", env={"PERSONALIZE_SERVER_PROT": "7001"})
    assert "PERSONALIZE_SERVER_PROT" in str(err.value)
    assert "did you mean PERSONALIZE_SERVER_PORT" in str(err.value)


def test_an_unknown_section_is_named() -> None:
    with pytest.raises(ConfigError, match="PERSONALIZE_SERVR_PORT"):
        check_environment(ServerConfig, "server", {"PERSONALIZE_SERVR_PORT": "1"})


def test_a_bad_value_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="PERSONALIZE_SERVER_PORT"):
        load(ServerConfig, "server", env={"PERSONALIZE_SERVER_PORT": "many"})


@pytest.mark.parametrize("module", ["services.server.main", "trainer.loop.service"])
def test_entry_points_refuse_unknown_variables_and_flags(module: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "PERSONALIZE_SERVER_ENGINE_MODLE": "x",
           "PERSONALIZE_TRAINER_SCHEDULE_MIN_NEW_FEEDBAK": "2"}
    done = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    named = ("PERSONALIZE_SERVER_ENGINE_MODLE" if module.startswith("services")
             else "PERSONALIZE_TRAINER_SCHEDULE_MIN_NEW_FEEDBAK")
    assert named in done.stderr
    flag = subprocess.run([sys.executable, "-m", module, "--no-such-flag", "1"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert flag.returncode == 2 and "--no-such-flag" in flag.stderr


def test_a_run_records_its_settings_but_no_credential() -> None:
    env = {"PERSONALIZE_TRAINER_PPO_LR": "0.001", "PERSONALIZE_TOKEN": "jwt",
           "PERSONALIZE_SERVER_AUTH_SECRETS": "s" * 32,
           "PERSONALIZE_SERVER_RESPONSE_KEYS": "k", "HOME": "/x"}
    assert recordable_environment(env) == {"PERSONALIZE_TRAINER_PPO_LR": "0.001"}
    # every variable that holds a secret or key is a known one, and listed
    names = (setting_names(ServerConfig, "PERSONALIZE_SERVER_")
             | setting_names(TrainerConfig, "PERSONALIZE_TRAINER_") | OTHER_VARIABLES)
    secret = {n for n in names if n.endswith(("SECRETS", "KEYS", "TOKEN", "PASSWORD"))}
    assert secret == CREDENTIALS
