SELECT customers.customer_id, trigger_event.event_id AS occurrence, trigger_event.id AS event_ref 
FROM events AS trigger_event JOIN customers ON customers.customer_id = trigger_event.customer_id 
WHERE customers.email IS NOT NULL AND trigger_event.type = 'purchase' AND trigger_event.occurred_at > '2011-12-09 00:00:00+00:00' AND trigger_event.occurred_at <= '2011-12-10 00:00:00+00:00' AND NOT (EXISTS (SELECT * 
FROM events AS earlier_purchase 
WHERE earlier_purchase.customer_id = trigger_event.customer_id AND earlier_purchase.type = 'purchase' AND (earlier_purchase.occurred_at < trigger_event.occurred_at OR earlier_purchase.occurred_at = trigger_event.occurred_at AND earlier_purchase.id < trigger_event.id))) AND (customers.created_at IS NULL OR customers.created_at <= '2011-12-10 00:00:00+00:00') AND NOT (EXISTS (SELECT * 
FROM enrollments 
WHERE enrollments.playbook_id = 'welcome-series' AND enrollments.customer_id = customers.customer_id AND enrollments.occurrence_key = trigger_event.event_id))
