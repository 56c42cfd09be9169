"""A Neutron agent with no dataplane: it only reports itself alive, so ports bind on its host.

Runs inside devcloud's OpenStack virtualenv (not the platform's): one per fake compute host. Neutron's
test mechanism driver ``fake_agent`` binds a port on a host where an agent of type "OFA driver agent"
is alive, for the network types and physical networks the agent reports. Usage::

    DEVCLOUD_AGENT_HOST=HOST python fake_agent.py --config-file neutron.conf --config-file ml2_conf.ini
"""

from __future__ import annotations

import os
import sys
import time

from neutron.agent import rpc as agent_rpc
from neutron.common import config as common_config
from neutron.conf.agent import common as agent_conf
from neutron_lib import constants, context
from neutron_lib.agent import topics
from oslo_config import cfg


def main() -> None:
    common_config.register_common_config_options()
    agent_conf.register_agent_state_opts_helper(cfg.CONF)
    common_config.init(sys.argv[1:])
    api = agent_rpc.PluginReportStateAPI(topics.REPORTS)
    ctx = context.get_admin_context_without_session()
    state = {
        "binary": "devcloud-fake-agent",
        "host": os.environ["DEVCLOUD_AGENT_HOST"],
        "topic": "N/A",
        "agent_type": constants.AGENT_TYPE_OFA,
        "configurations": {"tunnel_types": ["vxlan"], "interface_mappings": {"public": "devcloud-public"}},
        "start_flag": True,
    }
    while True:
        try:
            api.report_state(ctx, state, use_call=True)
            state.pop("start_flag", None)
        except Exception as exc:  # the server may not be up yet: keep reporting
            print(f"report_state failed, retrying: {exc}", file=sys.stderr, flush=True)  # noqa: T201
        time.sleep(cfg.CONF.AGENT.report_interval)


if __name__ == "__main__":
    main()
