"""The wiring of a runtime: the actor forms of the control plane and how they are started
(``actors``), and how an actor finds its peers by name (``peers``). Nothing below imports this
package; it imports what it wires."""
