from agentctl_proxy.cli import main

main()
