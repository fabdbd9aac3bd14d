"""The pure core: wire models of the messages, the message types, Ganeti names, the total
order of events and the state rules that fold them into a VM's or a network's state. No I/O,
no clock: everything else is built around these."""
